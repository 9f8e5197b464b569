"""Insertion dMSE (stitchkit.measure.insertion) against explicitly built hybrid SAEs."""

import pytest
import torch

from stitchkit import (
    evaluate,
    insert,
    marginal_delta_mse,
)
from tests.helpers import pair


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
