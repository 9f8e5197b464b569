"""Active/inactive MSE (stitchkit.measure.active_inactive) against explicit token masks."""

import pytest

from stitchkit import (
    active_inactive_mse,
)
from tests.helpers import pair


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
