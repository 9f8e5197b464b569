"""The insertion quadratic form (stitchkit.measure.gram) against explicitly built SAEs."""

import pytest
import torch

from stitchkit import (
    evaluate,
    insert,
    marginal_delta_mse,
    marginal_gram,
)
from tests.helpers import pair


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
