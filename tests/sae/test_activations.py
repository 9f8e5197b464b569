"""The activation classes (stitchkit.sae.activations): each one's encode rule, stitchability and what
the fused kernels are given, against plain torch."""

import pytest
import torch

from stitchkit import InvalidArgumentError, UnsupportedError
from stitchkit.sae.activations import ACTIVATIONS, BatchTopK, JumpReLU, ReLU, TopK, make_activation

PRE = torch.tensor([[-1.0, 0.5, 2.0, 0.1], [3.0, -0.2, 0.4, 0.3]])
TH = torch.tensor([0.0, 0.6, 1.0, 0.05])


def test_registry_names_every_class_once():
    assert ACTIVATIONS == {"relu": ReLU, "topk": TopK, "batchtopk": BatchTopK, "jumprelu": JumpReLU}
    assert all(cls.name == name for name, cls in ACTIVATIONS.items())
    with pytest.raises(InvalidArgumentError, match="activation must be one of"):
        make_activation("gelu")
    with pytest.raises(InvalidArgumentError, match="needs an integer k > 0"):
        make_activation("topk")
    with pytest.raises(InvalidArgumentError, match="k is only for topk/batchtopk"):
        make_activation("relu", k=3)


def test_each_rule_against_plain_torch():
    assert torch.equal(ReLU().activate(PRE, None, False), PRE.clamp_min(0))
    jump = JumpReLU().activate(PRE, TH, False)
    assert torch.equal(jump, torch.where(PRE > TH, PRE, 0.0).clamp_min(0))
    top = TopK(2).activate(PRE, None, False)
    assert torch.equal(top, torch.tensor([[0.0, 0.5, 2.0, 0.0], [3.0, 0.0, 0.4, 0.0]]))
    # batchtopk: training keeps the k * n_tokens largest over the batch, eval is a JumpReLU.
    bt = BatchTopK(2)
    kept = bt.activate(PRE, torch.tensor(0.35), training=True)
    assert int((kept != 0).sum()) == 4 and kept[0, 2] == 2.0 and kept[1, 0] == 3.0 and kept[0, 3] == 0
    assert torch.equal(bt.activate(PRE, torch.tensor(0.35), False), torch.where(PRE > 0.35, PRE, 0.0))


def test_stitchability_and_kernel_arguments():
    assert not ReLU().couples_features(False) and TopK(2).couples_features(False)
    assert BatchTopK(2).couples_features(True) and not BatchTopK(2).couples_features(False)
    assert torch.equal(ReLU().stitch_threshold(None, 4), torch.zeros(4))
    assert torch.equal(JumpReLU().stitch_threshold(TH, 4), TH)
    assert torch.equal(BatchTopK(2).kernel_threshold(torch.tensor(0.3), 4), torch.full((4,), 0.3))
    assert ReLU().kernel_threshold(None, 4) is None and TopK(5).kernel_k() == 5 and ReLU().kernel_k() is None
    with pytest.raises(UnsupportedError, match="cannot be stitched exactly"):
        TopK(2).stitch_threshold(None, 4)
    # A column subset of a JumpReLU gives those columns' values.
    cols = torch.tensor([1, 3])
    full = JumpReLU().activate(PRE, TH, False)
    assert torch.equal(JumpReLU().activate_columns(PRE[:, cols], TH[cols]), full[:, cols])
