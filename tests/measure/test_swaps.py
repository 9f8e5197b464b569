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
