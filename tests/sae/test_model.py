"""The SAE module (stitchkit.sae.model): encode, decode, loss by hand and on each route, stitching."""

import pytest
import torch

from stitchkit import SAE, InvalidArgumentError, ShapeError, UnsupportedError
from stitchkit.ops.codes.cpu import decode_via_nonzeros
from tests.helpers import random_sae


def hand_sae(activation="relu", **kw):
    """d_in=2, d_sae=3 with weights simple enough to compute by hand."""
    sae = SAE(2, 3, activation, **kw)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.25]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    return sae


def test_relu_encode_decode_loss_by_hand():
    sae = hand_sae(l1_coefficient=0.5)
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])
    # x - b_dec = [2, 1] and [0, 0]; pre = [2, 0.5, 1.25] and [0, -0.5, 0.25]
    f = sae.encode(x)
    assert torch.allclose(f, torch.tensor([[2.0, 0.5, 1.25], [0.0, 0.0, 0.25]]))
    x_hat = sae.decode(f)
    # b_dec + f W_dec: [1 + 2 + 1.25, 1 + 1 + 1.25] and [1.25, 1.25]
    assert torch.allclose(x_hat, torch.tensor([[4.25, 3.25], [1.25, 1.25]]))
    assert torch.allclose(sae(x), x_hat)
    loss = sae.loss(x)
    # squared errors summed over d_in: (1.25^2 + 1.25^2) and (0.25^2 + 0.25^2); mean over tokens
    assert loss.mse.item() == pytest.approx((3.125 + 0.125) / 2)
    assert loss.l1.item() == pytest.approx(0.5 * (3.75 + 0.25) / 2)
    assert loss.l0.item() == pytest.approx((3 + 1) / 2)
    assert loss.total.item() == pytest.approx(loss.mse.item() + loss.l1.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_decode_of_sparse_features_is_the_dense_product(dtype):
    # Sparse f on the CPU is decoded from its nonzeros (ops.codes.cpu.decode_via_nonzeros).
    sae = random_sae(d_in=13, d_sae=400, seed=3).to(dtype)
    g = torch.Generator().manual_seed(4)
    f = torch.rand(2, 9, 400, generator=g, dtype=dtype) * (torch.rand(2, 9, 400, generator=g) < 0.01)
    f[0, 0] = 0.0  # a token with no active feature
    assert 0 < int((f != 0).sum()) < 0.03 * f.numel()
    want = f @ sae.W_dec.detach() + sae.b_dec.detach()
    with torch.no_grad():
        assert sae.decode(f).shape == (2, 9, 13)
        torch.testing.assert_close(sae.decode(f), want)
        torch.testing.assert_close(sae.decode(f)[0, 0], sae.b_dec)
        assert decode_via_nonzeros(f, sae.W_dec, sae.b_dec) is not None
        assert decode_via_nonzeros(torch.rand(9, 400, dtype=dtype), sae.W_dec, sae.b_dec) is None  # dense
        assert decode_via_nonzeros(f[:, :0], sae.W_dec, sae.b_dec) is None  # no tokens
    # The decoder's gradient is the dense product's (retraining a decoder on frozen codes).
    sae.decode(f).pow(2).sum().backward()
    dense = f.reshape(-1, 400) @ sae.W_dec.detach() + sae.b_dec.detach()
    torch.testing.assert_close(sae.W_dec.grad, 2 * f.reshape(-1, 400).T @ dense)
    torch.testing.assert_close(sae.b_dec.grad, 2 * dense.sum(0))


def test_decode_gradient_reaches_inactive_features():
    # An f that needs its gradient takes the dense product: d x_hat / d f_j = W_dec[j] at zeros too.
    sae = random_sae(d_in=5, d_sae=300, seed=5)
    f = torch.zeros(4, 300, requires_grad=True)
    sae.decode(f).sum().backward()
    torch.testing.assert_close(f.grad, sae.W_dec.detach().sum(1).expand(4, 300))


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("bias", [-2.5, 0.0], ids=["sparse", "dense"])
def test_cpu_relu_loss_gradients_are_autograds(bias, shift):
    # SAE.loss on the CPU (ops.sae_loss.cpu.relu_sae_loss_cpu): hand-written backward on f's
    # nonzeros where f is sparse (about 1% here), dense products where not (about 50%).
    sae = random_sae(d_in=13, d_sae=301, seed=7, dtype=torch.float64, apply_b_dec_to_input=shift)
    with torch.no_grad():
        sae.W_enc.div_(13**0.5)
        sae.b_enc.fill_(bias)
    sae.l1_coefficient = 0.3
    x = torch.randn(57, 13, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    if bias:  # a token with no active feature: pre = b_enc < 0
        x[0] = sae.b_dec.detach() if shift else 0.0
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    got = sae.loss(x)
    got.total.backward()
    grads = [p.grad.clone() for p in params]
    sae.zero_grad()
    f = sae.encode(x)
    density = (f > 0).double().mean()
    assert (0.003 < density < 0.03 and not (f[0] > 0).any()) if bias else (density > 0.3)
    mse = (sae.decode(f) - x).pow(2).sum(1).mean()
    l1 = sae.l1_coefficient * f.sum(1).mean()
    (mse + l1).backward()
    assert got.mse.item() == pytest.approx(mse.item(), rel=1e-12)
    assert got.l1.item() == pytest.approx(l1.item(), rel=1e-12)
    assert got.l0.item() == pytest.approx((f > 0).double().sum(1).mean().item(), rel=1e-12)
    assert torch.equal(got.fired, (f > 0).any(0))
    for name, mine, p in zip(("W_enc", "b_enc", "W_dec", "b_dec"), grads, params):
        torch.testing.assert_close(mine, p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_cpu_fast_paths_switch_off(monkeypatch):
    # STITCHKIT_KERNELS=0: the plain torch paths, whose l0 is the float32 mean over tokens.
    sae = random_sae(d_in=5, d_sae=40, seed=9)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(10))
    fast = sae.loss(x)
    monkeypatch.setenv("STITCHKIT_KERNELS", "0")
    plain = sae.loss(x)
    assert (
        plain.mse.grad_fn is not None and type(plain.mse.grad_fn).__name__ != type(fast.mse.grad_fn).__name__
    )
    assert plain.total.item() == pytest.approx(fast.total.item(), rel=1e-5)


def test_apply_b_dec_to_input_false():
    sae = hand_sae(apply_b_dec_to_input=False)
    x = torch.tensor([[3.0, 2.0]])  # pre = x W_enc + b_enc = [3, 1.5, 1.25]
    assert torch.allclose(sae.encode(x), torch.tensor([[3.0, 1.5, 1.25]]))


def test_topk_keeps_k_largest_and_relus_them():
    sae = hand_sae("topk", k=2)
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])  # pre rows [2, .5, 1.25], [0, -.5, .25]
    f = sae.encode(x)
    assert torch.allclose(f, torch.tensor([[2.0, 0.0, 1.25], [0.0, 0.0, 0.25]]))


def test_jumprelu_threshold_per_feature():
    sae = hand_sae("jumprelu")
    sae.threshold.copy_(torch.tensor([2.0, 0.4, 1.3]))
    f = sae.encode(torch.tensor([[3.0, 2.0]]))  # pre [2, .5, 1.25]: 2 > 2 is false
    assert torch.allclose(f, torch.tensor([[0.0, 0.5, 0.0]]))


def test_batchtopk_train_uses_batch_budget_eval_uses_threshold():
    sae = hand_sae("batchtopk", k=1)
    x = torch.tensor([[3.0, 2.0], [1.0, 1.0]])  # relu(pre): [2, .5, 1.25], [0, 0, .25]
    sae.train()
    f = sae.encode(x)  # k * n = 2 largest over the batch: 2 and 1.25
    assert torch.allclose(f, torch.tensor([[2.0, 0.0, 1.25], [0.0, 0.0, 0.0]]))
    sae.eval()
    sae.threshold.fill_(0.3)
    assert torch.allclose(sae.encode(x), torch.tensor([[2.0, 0.5, 1.25], [0.0, 0.0, 0.0]]))


def test_new_sae_is_in_eval_mode_with_unit_decoder_rows():
    sae = SAE(5, 9)
    assert not sae.training
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(9))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_in=0, d_sae=3), "d_in"),
        (dict(d_in=3, d_sae=3, activation="gelu"), "activation"),
        (dict(d_in=3, d_sae=3, activation="topk"), "k > 0"),
        (dict(d_in=3, d_sae=3, activation="relu", k=2), "only for topk"),
        (dict(d_in=3, d_sae=3, l1_coefficient=-1), "l1_coefficient"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        SAE(**kwargs)


def test_wrong_input_width_names_sae_and_shapes():
    sae = SAE(4, 8, name="mine")
    with pytest.raises(ShapeError, match=r"'mine'.*\(2, 5\).*\[\.\.\., 4\]"):
        sae.encode(torch.zeros(2, 5))


def _hybrid_reference(base, donors_and_features, x):
    """SAE*(x) = SAE_base(x) restricted to its chosen features + sum f_donor,j W_dec_donor,j."""
    out = base.b_dec.detach().clone().expand(x.shape[0], -1).clone()
    for sae, idx in donors_and_features:
        f = sae.encode(x)[:, idx]
        out += f @ sae.W_dec.detach()[idx]
    return out


@pytest.mark.parametrize("donor_act", ["relu", "jumprelu", "batchtopk"])
def test_from_features_keeps_each_feature_exact(donor_act):
    base = random_sae("relu", seed=1)
    donor = random_sae(donor_act, seed=2, apply_b_dec_to_input=(donor_act != "jumprelu"))
    parts = [(base, torch.arange(base.d_sae)), (donor, [4, 0, 7])]
    stitched = SAE.from_features(parts, base=base, name="hybrid")
    x = torch.randn(50, base.d_in, generator=torch.Generator().manual_seed(3))
    f_expected = torch.cat([base.encode(x), donor.encode(x)[:, [4, 0, 7]]], dim=1)
    assert torch.allclose(stitched.encode(x), f_expected, atol=1e-5)
    assert torch.allclose(stitched(x), _hybrid_reference(base, parts, x), atol=1e-4)
    assert stitched.activation == ("relu" if donor_act == "relu" else "jumprelu")
    assert stitched.provenance.entries()[-3:] == [(donor.name, 4), (donor.name, 0), (donor.name, 7)]
    assert stitched.provenance.entries()[0] == (base.name, 0)


def test_provenance_survives_restitching():
    a, b = random_sae(seed=1, name="a"), random_sae(seed=2, name="b")
    ab = SAE.from_features([(a, [0, 1]), (b, [5])], base=a)
    again = SAE.from_features([(ab, [2, 0])], base=b)
    assert again.provenance.entries() == [("b", 5), ("a", 0)]
    assert again.select([1]).provenance.entries() == [("a", 0)]


def test_from_features_errors():
    a = random_sae(seed=1)
    with pytest.raises(ShapeError, match="d_in=5.*d_in=7"):
        SAE.from_features([(random_sae(d_in=5), [0])], base=a)
    with pytest.raises(UnsupportedError, match="topk"):
        SAE.from_features([(random_sae("topk"), [0])], base=a)
    with pytest.raises(InvalidArgumentError, match="hook"):
        SAE.from_features([(random_sae(hook_name="h1"), [0])], base=random_sae(hook_name="h2"))
    with pytest.raises(InvalidArgumentError, match=r"indices must lie in \[0, 11\)"):
        SAE.from_features([(a, [11])], base=a)
    with pytest.raises(InvalidArgumentError, match="empty"):
        SAE.from_features([], base=a)
    with pytest.raises(InvalidArgumentError, match="no feature"):
        SAE.from_features([(a, [])], base=a)
