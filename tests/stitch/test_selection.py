"""Greedy exact selection against the cosine rule (stitchkit.stitch.selection)."""

import pytest
import torch

from stitchkit import (
    SAE,
    evaluate,
    greedy_selection,
    insert,
    marginal_delta_mse,
)


def test_greedy_selection_is_exact_and_beats_or_ties_cosine_at_equal_counts():
    g = torch.Generator().manual_seed(9)
    dirs = torch.randn(40, 16, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=1, keepdim=True)
    donor = SAE(16, 40, name="donor", dtype=torch.float64)
    with torch.no_grad():
        donor.W_dec.copy_(dirs)
        donor.W_enc.copy_(dirs.T)
        donor.b_enc.fill_(-0.4)
    base = donor.select(torch.arange(6), name="base")
    on = torch.rand(400, 40, generator=g, dtype=torch.float64) < 0.05
    codes = on * torch.rand(400, 40, generator=g, dtype=torch.float64)
    x = codes @ dirs
    sel = greedy_selection(base, donor, x, threshold=0.7)
    assert len(sel.greedy) >= 2
    first = int(torch.argmin(marginal_delta_mse(base, donor, x)))
    assert int(sel.greedy[0]) == first
    assert (sel.greedy_mse[1:] < sel.greedy_mse[:-1]).all()  # stops before a pick would hurt
    k = len(sel.greedy)
    explicit = evaluate(insert(base, donor, sel.greedy), x).mse
    assert sel.greedy_mse[k].item() == pytest.approx(explicit, rel=1e-9)
    if len(sel.cosine):
        c = len(sel.cosine)
        explicit = evaluate(insert(base, donor, sel.cosine), x).mse
        assert sel.cosine_mse[c].item() == pytest.approx(explicit, rel=1e-9)
        # The first greedy pick is the best single feature: never worse than the cosine rule's first.
        assert sel.greedy_mse[1] <= sel.cosine_mse[1] + 1e-12
    assert len(greedy_selection(base, donor, x, n=1).greedy) == 1
