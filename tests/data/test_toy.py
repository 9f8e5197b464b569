"""Toy activations with known ground truth (stitchkit.data.toy)."""

import torch

from stitchkit import make_toy


def test_toy_is_seeded_and_structured():
    toy = make_toy(d_in=32, n_parents=4, children_per_parent=3, n_rare=5, child_cosine=0.8, seed=3)
    assert toy.directions.shape == (4 + 12 + 5, 32)
    assert torch.allclose(toy.directions.norm(dim=1), torch.ones(21), atol=1e-5)
    children = [i for i, k in enumerate(toy.kind) if k == "child"]
    cos = (toy.directions[children] * toy.directions[toy.parent_of[children]]).sum(1)
    assert torch.allclose(cos, torch.full_like(cos, 0.8), atol=1e-5)
    assert torch.equal(
        toy.sample(100, seed=1),
        make_toy(d_in=32, n_parents=4, children_per_parent=3, n_rare=5, seed=3).sample(100, seed=1),
    )
    assert not torch.equal(toy.sample(100, seed=1), toy.sample(100, seed=2))
    sizes = [b.shape[0] for b in toy.batches(1000, 300)]
    assert sizes == [300, 300, 300, 100]
