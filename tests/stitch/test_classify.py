"""Classifying features (stitchkit.stitch.classify), the 2x2 table, decoder/activation agreement."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    ShapeError,
    activation_similarity,
    classify,
    delta_table,
    interpolate,
    similarity_agreement,
    swap_groups,
)
from tests.helpers import built_pair, random_sae


def test_delta_table_counts():
    small, large = built_pair()
    c = classify(small, large)
    dm = torch.tensor([-1.0, 2.0, 3.0, -4.0, -5.0, 6.0], dtype=torch.float64)
    t = delta_table(c, dm)
    assert (t.novel_helps, t.novel_hurts, t.recon_helps, t.recon_hurts) == (1, 0, 2, 3)
    with pytest.raises(InvalidArgumentError, match="one value per large feature"):
        delta_table(c, dm[:3])


def test_similarity_agreement_on_identical_and_unrelated_pairs():
    small = random_sae(d_in=8, d_sae=12, seed=11, name="small")
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(12))
    same = small.select(torch.arange(12).flip(0), name="same")
    c = classify(small, same)
    a = similarity_agreement(c, activation_similarity(same, small, x))
    assert a.n_live > 0
    assert a.same_nearest == 1.0 and a.class_agreement == 1.0


def test_pairs_with_different_inputs_are_refused():
    small, large = built_pair()
    narrow = random_sae(d_in=5, d_sae=4, name="narrow", dtype=torch.float64)
    with pytest.raises(ShapeError, match="d_in"):
        classify(small, narrow)
    small.hook_name, large.hook_name = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"
    with pytest.raises(InvalidArgumentError, match="reads hook"):
        swap_groups(small, large)
    with pytest.raises(ShapeError, match=r"expected \[n, 6\]"):
        interpolate(built_pair()[0], built_pair()[1], torch.zeros(3, 5, dtype=torch.float64))
