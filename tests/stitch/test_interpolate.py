"""Insertion curves and the interpolation (stitchkit.stitch.interpolate) against explicit SAEs."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    evaluate,
    insert,
    insertion_curve,
    interpolate,
)
from tests.helpers import random_sae


def test_interpolation_path_is_exact_and_reaches_the_large_features():
    small = random_sae(d_in=8, d_sae=10, seed=1, name="small", dtype=torch.float64)
    large = random_sae(d_in=8, d_sae=25, seed=2, name="large", dtype=torch.float64)
    with torch.no_grad():  # make some large rows children of small rows
        large.W_dec[:10] = small.W_dec + 0.3 * torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
        large.W_dec[10] = small.W_dec[0] + 0.2 * small.W_dec[1]
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    path = interpolate(small, large, x, 0.7)
    n_steps = 2 + len(path.groups)
    assert len(path.labels) == n_steps and len(path.metrics.mse) == n_steps
    assert len(path.groups) >= 3
    for step in (0, 1, n_steps - 1):
        m = evaluate(path.sae(step), x)
        assert path.metrics.mse[step].item() == pytest.approx(m.mse, rel=1e-10)
        assert path.metrics.l0[step].item() == pytest.approx(m.l0, rel=1e-12)
    final = path.sae(n_steps - 1)
    from_large = [i for s, i in final.provenance.entries() if s == "large"]
    assert sorted(from_large) == list(range(25))  # every large feature is in by the end
    linked = torch.cat([g.parents for g in path.groups]).tolist()
    from_small = sorted(i for s, i in final.provenance.entries() if s == "small")
    assert from_small == sorted(set(range(10)) - set(linked))
    with pytest.raises(InvalidArgumentError, match=r"step must lie in \[0, "):
        path.sae(n_steps)


def test_insertion_curve_matches_explicit_insertions():
    small = random_sae(d_in=8, d_sae=10, seed=5, name="small", dtype=torch.float64)
    large = random_sae(d_in=8, d_sae=30, seed=6, name="large", dtype=torch.float64)
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    order = [7, 3, 29, 0, 11, 12]
    curve = insertion_curve(small, large, order, x)
    assert curve.n_features.tolist() == [10, 11, 12, 13, 14, 15, 16]
    for k in (1, 4, 6):
        explicit = evaluate(insert(small, large, order[:k]), x).mse
        assert curve.mse[k].item() == pytest.approx(explicit, rel=1e-10)
    coarse = insertion_curve(small, large, order, x, points=3)
    assert coarse.n_features.tolist() == [10, 12, 14, 16]
    assert torch.allclose(coarse.mse, curve.mse[[0, 2, 4, 6]])
