"""Activation streams (stitchkit.data.streams): tensors, lists of batches, callables."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    as_activations,
)


def test_activations_wrapping():
    x = torch.arange(20.0).reshape(10, 2)
    assert [b.shape[0] for b in as_activations(x, batch_size=4)] == [4, 4, 2]
    acts = as_activations(lambda: iter([x, x]))
    assert len(list(acts)) == 2 and len(list(acts)) == 2  # a callable is called per pass
    once = as_activations(iter([x]))
    list(once)
    with pytest.raises(InvalidArgumentError, match="second pass"):
        list(once)
    with pytest.raises(InvalidArgumentError, match="batch 0 is str"):
        list(as_activations(["no"]))
    with pytest.raises(InvalidArgumentError, match="expected a tensor"):
        as_activations(3)
