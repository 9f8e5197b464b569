"""The one-pass measurements of evaluate.py against building each SAE explicitly and measuring it."""

import pytest
import torch
from conftest import random_sae

from stitchkit import (
    InvalidArgumentError,
    ShapeError,
    activation_similarity,
    active_inactive_mse,
    evaluate,
    insert,
    marginal_delta_mse,
    marginal_gram,
    path_metrics,
    swap,
    swap_delta,
)
from stitchkit.stitch import SwapGroup

F64 = dict(dtype=torch.float64)


def pair(dtype=torch.float64, donor_activation="relu", d_in=9, seed=0):
    base = random_sae("relu", d_in=d_in, d_sae=13, seed=seed, dtype=dtype, name="base")
    donor = random_sae(donor_activation, d_in=d_in, d_sae=29, seed=seed + 1, dtype=dtype, name="donor")
    x = torch.randn(700, d_in, generator=torch.Generator().manual_seed(seed + 2), dtype=dtype) * 2 + 0.5
    return base, donor, x


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
def test_marginal_delta_mse_equals_explicit_hybrids(activation):
    base, donor, x = pair(donor_activation=activation)
    batches = [x[:250], x[250:]]
    dmse = marginal_delta_mse(base, donor, batches)
    assert dmse.shape == (29,) and dmse.dtype == torch.float64
    mse0 = evaluate(base, x).mse
    for j in range(29):
        hybrid = insert(base, donor, [j])
        assert hybrid.provenance.entries()[-1] == ("donor", j)
        assert dmse[j].item() == pytest.approx(evaluate(hybrid, x).mse - mse0, rel=1e-9, abs=1e-9)
    sub = marginal_delta_mse(base, donor, x, features=[28, 3, 3])
    assert torch.allclose(sub, dmse[[28, 3, 3]], rtol=1e-12)


def test_marginal_delta_mse_float32_within_tolerance():
    base, donor, x = pair(dtype=torch.float32)
    dmse = marginal_delta_mse(base, donor, x)
    mse0 = evaluate(base, x).mse
    for j in (0, 7, 28):
        explicit = evaluate(insert(base, donor, [j]), x).mse - mse0
        assert dmse[j].item() == pytest.approx(explicit, abs=1e-5 * mse0)


def test_path_metrics_equals_explicit_saes_at_every_step():
    base, donor, x = pair()
    steps = [([1, 2, 3], []), ([], [0, 5]), ([4], [6, 7]), ([], []), (torch.tensor([20, 28]), [12])]
    pm = path_metrics(base, donor, steps, [x[:333], x[333:]])
    assert len(pm.mse) == len(steps) + 1
    added, removed = [], []
    for s in range(len(steps) + 1):
        if s:
            added += list(torch.as_tensor(steps[s - 1][0]).tolist())
            removed += list(torch.as_tensor(steps[s - 1][1]).tolist())
        kept = [i for i in range(base.d_sae) if i not in removed]
        parts = [(base, kept)] + ([(donor, added)] if added else [])
        sae = type(base).from_features(parts, base=base)
        m = evaluate(sae, x)
        assert pm.n_features[s] == sae.d_sae
        assert pm.mse[s].item() == pytest.approx(m.mse, rel=1e-10)
        assert pm.normalized_mse[s].item() == pytest.approx(m.normalized_mse, rel=1e-10)
        assert pm.l0[s].item() == pytest.approx(m.l0, rel=1e-12)
    with pytest.raises(InvalidArgumentError, match="added twice"):
        path_metrics(base, donor, [([1], []), ([1], [])], x)
    with pytest.raises(InvalidArgumentError, match=r"steps\[0\] removed.*\[0, 13\)"):
        path_metrics(base, donor, [([1], [13])], x)


def test_swap_delta_equals_explicit_swaps_small_and_large_groups():
    base, donor, x = pair()
    groups = [
        SwapGroup(torch.tensor([3, 4]), torch.tensor([0]), 0.9, 2),
        SwapGroup(torch.tensor([5]), torch.tensor([1, 2]), 0.8, 2),
        SwapGroup(torch.tensor([6]), torch.tensor([], dtype=torch.int64), 0.75, 1),
        # more than 32 members: the per-group Gram path
        SwapGroup(torch.arange(5, 29), torch.arange(3, 13), 0.71, 34),
    ]
    dmse, dl0 = swap_delta(base, donor, [(g.children, g.parents) for g in groups], [x[:100], x[100:]])
    m0 = evaluate(base, x)
    for g, dm, dz in zip(groups, dmse, dl0):
        m = evaluate(swap(base, donor, g), x)
        assert dm.item() == pytest.approx(m.mse - m0.mse, rel=1e-9, abs=1e-9)
        assert dz.item() == pytest.approx(m.l0 - m0.l0, abs=1e-12)


def test_marginal_gram_gives_exact_mse_of_any_insertion_order():
    base, donor, x = pair()
    mg = marginal_gram(base, donor, x, features=[2, 9, 17, 25, 4])
    order = torch.tensor([3, 0, 4])  # donor features 25, 2, 4
    curve = mg.mse_of(order)
    assert curve[0].item() == pytest.approx(evaluate(base, x).mse, rel=1e-12)
    for k in range(1, 4):
        explicit = evaluate(insert(base, donor, mg.features[order[:k]]), x).mse
        assert curve[k].item() == pytest.approx(explicit, rel=1e-9)
    single = marginal_delta_mse(base, donor, x, features=mg.features)
    assert torch.allclose(mg.gram.diagonal() - 2 * mg.linear, single, rtol=1e-9)


def test_active_inactive_mse_against_masks():
    small, large, x = pair()
    res = active_inactive_mse(small, large, x, features=[0, 5, 11])
    e_s = (small(x) - x).pow(2).sum(1)
    e_l = (large(x) - x).pow(2).sum(1)
    f = large.encode(x)
    for pos, j in enumerate([0, 5, 11]):
        on = f[:, j] > 0
        assert res.n_active[pos] == on.sum()
        if on.any():
            assert res.small_active[pos].item() == pytest.approx(e_s[on].mean().item(), rel=1e-10)
            assert res.large_active[pos].item() == pytest.approx(e_l[on].mean().item(), rel=1e-10)
        if (~on).any():
            assert res.small_inactive[pos].item() == pytest.approx(e_s[~on].mean().item(), rel=1e-10)
            assert res.large_inactive[pos].item() == pytest.approx(e_l[~on].mean().item(), rel=1e-10)
    s = res.summary()
    assert s["n_features"] <= 3 and "gap_active" in s


def test_activation_similarity_against_dense_cosines():
    small, large, x = pair()
    with torch.no_grad():
        large.b_enc[4] = -1e6  # a feature that never fires
    res = activation_similarity(large, small, [x[:300], x[300:]])
    f, g = large.encode(x), small.encode(x)
    cos = (f.T @ g) / (f.norm(dim=0)[:, None] * g.norm(dim=0)[None, :])
    for j in range(large.d_sae):
        if j == 4:
            assert res.indices[j] == -1 and torch.isnan(res.values[j])
            continue
        row = cos[j].nan_to_num(nan=-1.0)
        assert res.indices[j] == int(row.argmax())
        assert res.values[j].item() == pytest.approx(row.max().item(), rel=1e-6)


def test_measurements_refuse_bad_input():
    base, donor, x = pair()
    other = random_sae(d_in=8, d_sae=5, name="narrow", **F64)
    with pytest.raises(ShapeError, match="'narrow' has d_in=8"):
        marginal_delta_mse(base, other, x)
    hooked = random_sae(d_in=9, d_sae=5, hook_name="blocks.1.hook_resid_pre", name="h", **F64)
    base.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(InvalidArgumentError, match="reads hook"):
        marginal_delta_mse(base, hooked, x)
    base.hook_name = None
    with pytest.raises(InvalidArgumentError, match="empty"):
        marginal_delta_mse(base, donor, x, features=[])
    with pytest.raises(InvalidArgumentError, match=r"\[0, 29\)"):
        marginal_delta_mse(base, donor, x, features=[29])
    with pytest.raises(ShapeError, match=r"batch 1 has shape \(4, 8\), expected \[n, 9\]"):
        marginal_delta_mse(base, donor, [x[:4], torch.zeros(4, 8, **F64)])
    with pytest.raises(InvalidArgumentError, match="empty"):
        marginal_delta_mse(base, donor, [])
