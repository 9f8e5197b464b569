"""Swap deltas (stitchkit.measure.swaps) against explicitly swapped SAEs, small and large groups."""

import pytest
import torch

from stitchkit import (
    evaluate,
    swap,
    swap_delta,
)
from stitchkit.stitch import SwapGroup
from tests.helpers import pair


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


def _sparse(sae, x, rate=0.02):
    """sae with each feature's b_enc set so that it fires on about `rate` of x's tokens."""
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre, 1 - rate, dim=0))
    return sae


@pytest.mark.parametrize("dtype,block", [(torch.float64, None), (torch.float32, None), (torch.float64, 3)])
def test_swap_delta_on_sparse_codes_takes_the_nonzeros_and_equals_explicit_swaps(dtype, block, monkeypatch):
    """Codes about 2% dense: the CPU route works on the members' nonzeros (u_g per token and
    group, in blocks of whole tokens: block=3 nonzeros cuts nearly every token, and a token with
    more than 3 nonzeros takes a block of its own); the deltas still equal explicitly swapped
    SAEs'."""
    from stitchkit.measure import swaps
    from stitchkit.measure.swaps import SwapAccumulator

    if block is not None:
        monkeypatch.setattr(swaps, "rows_per_chunk", lambda *_: block)

    base, donor, _ = pair(dtype=dtype)
    x = torch.randn(20_000, 9, generator=torch.Generator().manual_seed(5), dtype=dtype) * 2 + 0.5
    base, donor = _sparse(base, x), _sparse(donor, x)
    sparse_calls = []
    real = SwapAccumulator._update_sparse
    spy = lambda s, nz, r: (sparse_calls.append(1), real(s, nz, r))  # noqa: E731
    monkeypatch.setattr(SwapAccumulator, "_update_sparse", spy)
    groups = [
        SwapGroup(torch.tensor([3, 4]), torch.tensor([0]), 0.9, 2),
        SwapGroup(torch.tensor([5]), torch.tensor([1, 2]), 0.8, 2),
        SwapGroup(torch.arange(5, 29), torch.arange(3, 13), 0.71, 34),
    ]
    dmse, dl0 = swap_delta(base, donor, [(g.children, g.parents) for g in groups], x.split(3000))
    assert len(sparse_calls) == 7
    m0 = evaluate(base, x)
    rel = 1e-9 if dtype == torch.float64 else 2e-4
    for g, dm, dz in zip(groups, dmse, dl0):
        m = evaluate(swap(base, donor, g), x)
        assert dm.item() != 0
        assert dm.item() == pytest.approx(m.mse - m0.mse, rel=rel, abs=rel * m0.mse)
        assert dz.item() == pytest.approx(m.l0 - m0.l0, abs=1e-12)
