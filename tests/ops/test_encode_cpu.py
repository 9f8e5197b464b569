"""The CPU encode screen (stitchkit.ops.encode.cpu) against the float64 oracle: the active set is
the fp32 one (only a pre-activation within fp32's error of its cut may differ), each value is the
pre-activation exactly rounded; at awkward shapes, at and just inside the cut, with thresholds;
through SAE.encode / codes / encode_features, evaluate and the training loss, with the screen on
and forced off."""

import pytest
import torch

import stitchkit as sk
from stitchkit.ops import dispatch
from stitchkit.ops.codes.cpu import dense_from_nonzeros
from stitchkit.ops.encode.cpu import screened_codes_cpu
from stitchkit.ops.sae_loss.cpu import relu_sae_loss_cpu
from tests.helpers import random_sae
from tests.tolerances import EXACT_FP32, KERNEL

pytestmark = pytest.mark.skipif(not dispatch.cpu_has_bf16(), reason="this CPU has no bf16 units")


def problem(n, d, F, seed=0, active=0.02):
    """Tokens, unit encoder columns and biases that leave about `active` of the features on."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3
    W = torch.randn(d, F, generator=g)
    W /= W.norm(dim=0, keepdim=True)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - active)).item()
    b = -z * 3 + 0.1 * torch.randn(F, generator=g)
    return x, W, b


def check_exact(x, W, b, cut, nz, slack=1e-5):
    """Every feature active in float64 beyond `slack` of its cut is kept, no feature below it
    is, and each kept value is its float64 pre-activation rounded to fp32."""
    pre = x.double() @ W.double() + b.double()
    c = torch.zeros(W.shape[1], dtype=torch.float64) if cut is None else cut.double()
    f = dense_from_nonzeros(nz, W.shape[1]).double()
    scale = (x.double().norm(dim=1)[:, None] * W.double().norm(dim=0)[None, :] + b.double().abs()) * slack
    sure_on, sure_off = pre > c + scale, pre <= c - scale
    assert (f[sure_on] > 0).all() and (f[sure_off] == 0).all()
    on = f > 0
    assert torch.equal(f[on].float(), pre[on].float())  # exactly rounded
    assert torch.equal(nz.starts, torch.cumsum(on.sum(1), 0) - on.sum(1))  # tokens in order
    assert (nz.cols[1:] > nz.cols[:-1])[nz.rows[1:] == nz.rows[:-1]].all()  # features ascending


SHAPES = [
    (1, 1, 1, None),
    (1, 5, 37, None),
    (33, 7, 19, 8),
    (50, 3, 70, 16),
    (17, 40, 100, 5),
    (300, 64, 129, None),
]


@pytest.mark.parametrize("n, d, F, rows", SHAPES)
def test_the_screen_keeps_the_fp32_features(n, d, F, rows):
    x, W, b = problem(n, d, F, seed=n + d)
    nz = screened_codes_cpu(x, W, b, rows=rows)
    assert nz is not None
    check_exact(x, W, b, None, nz)


def test_pre_activations_at_and_just_inside_the_cut():
    d, F, near = 16, 800, 16
    x = torch.zeros(8, d)
    x[:, 0] = 1.0  # token t's pre-activation of feature j is W[0, j] + b[j] = W[0, j]
    W, b = torch.zeros(d, F), torch.zeros(F)
    cut = torch.zeros(F)
    cut[near // 2 :] = 0.25  # a JumpReLU threshold beyond the first 8 features
    offsets = torch.tensor([-1e-4, -1e-6, 0.0, 1e-6, 1e-4, 2.0, -2.0, 0.0]).repeat(near // 8)
    W[0, :near] = cut[:near] + offsets  # exactly at the cut, and just either side of it
    W[0, near:] = cut[near:] - 2.0  # the rest far below: the screen rules them out
    nz = screened_codes_cpu(x, W, b, cut)
    f = dense_from_nonzeros(nz, F)
    want = (W[0] > cut).float() * W[0]
    assert torch.equal(f, want.expand(8, F))  # at the cut: off (strict); 1e-6 above: on
    assert int((want > 0).sum()) == 6  # 1e-6, 1e-4 and 2.0 above each cut


def test_too_many_candidates_declines_and_backs_off_for_that_encoder():
    x, W, b = problem(64, 32, 512, seed=5)
    dense = torch.zeros(512)  # half the features on
    assert screened_codes_cpu(x, W, dense) is None
    assert screened_codes_cpu(x, W, b) is None  # skipped: declined the call before (backoff 1)
    assert screened_codes_cpu(x, W, b) is not None  # and then screened again
    other = W.clone()  # another encoder is not held back by W's
    assert screened_codes_cpu(x, W, dense) is None and screened_codes_cpu(x, other, b) is not None
    # Dense calls: skipped 1 -> declined again -> skipped 2 -> declined: the window doubles.
    for _ in range(5):
        assert screened_codes_cpu(x, W, dense) is None
    skipped = 0
    while screened_codes_cpu(x, W, b) is None:
        skipped += 1
    assert skipped == 4  # the third decline in a row skips the next 4 calls; then it screens


@pytest.mark.parametrize("how", ["in_place", "through_data"])
def test_a_weight_changed_in_place_is_screened_anew(how):
    x, W, b = problem(100, 24, 300, seed=6)
    W = torch.nn.Parameter(W)
    first = screened_codes_cpu(x, W, b)
    with torch.no_grad():
        if how == "in_place":
            W[:, :10] *= -1  # what an optimiser step does: same tensor, new values, new version
        else:
            W.data[:, :10] *= -1  # behind autograd's back: the version stays
    again = screened_codes_cpu(x, W, b)
    check_exact(x, W.detach(), b, None, again)
    assert not torch.equal(dense_from_nonzeros(first, 300), dense_from_nonzeros(again, 300))


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("screen", [True, False])
def test_through_the_sae(activation, screen):
    sae = random_sae(activation, d_in=24, d_sae=400, seed=7)
    with torch.no_grad():
        sae.b_enc -= 25.0  # pre-activations have a spread of about 10: a few percent active
    x = torch.randn(3, 50, 24, generator=torch.Generator().manual_seed(8)) * 2
    with dispatch.configure(cpu_bf16=screen), torch.no_grad():
        assert (sae.codes(x) is not None) == screen
        f = sae.encode(x)
        cols = torch.tensor([3, 0, 399, 17])
        fc = sae.encode_features(x, cols)
    with dispatch.configure(kernels=False), torch.no_grad():
        ref = sae.encode(x)
    assert f.shape == ref.shape == (3, 50, 400) and 0 < (f > 0).float().mean() < 0.05
    torch.testing.assert_close(f, ref, **KERNEL[torch.float32])
    if screen:  # each pre-activation rounded once from float64: its value in encode(x), bit for bit
        assert torch.equal(fc, f[..., cols])
    else:  # fp32 products of 4 and of 400 columns may be summed in another order (AMD EPYC's BLAS)
        torch.testing.assert_close(fc, f[..., cols], **KERNEL[torch.float32])


def test_no_screen_where_a_gradient_is_needed_or_kernels_are_off(monkeypatch):
    sae = random_sae("relu", d_in=8, d_sae=40, seed=9)
    x = torch.randn(10, 8)
    with dispatch.configure(cpu_bf16=True):
        sae.W_enc.requires_grad_(True)
        assert sae.codes(x) is None  # autograd needs the dense product
        with torch.no_grad():
            assert dispatch.cpu_screen(x.device, torch.float32)
            assert not dispatch.cpu_screen(x.device, torch.float64)
        monkeypatch.setenv("STITCHKIT_KERNELS", "0")
        assert not dispatch.cpu_screen(x.device, torch.float32)


def test_evaluate_with_the_screen_on_and_off():
    sae = random_sae("relu", d_in=32, d_sae=600, seed=10)
    with torch.no_grad():
        sae.b_enc -= 30.0  # pre-activations have a spread of about 11: a few percent on
    x = torch.randn(700, 32, generator=torch.Generator().manual_seed(11)) * 2
    with dispatch.configure(cpu_bf16=True):
        on = sk.evaluate(sae, x)
    with dispatch.configure(cpu_bf16=False):
        off = sk.evaluate(sae, x)
    assert on.l0 == off.l0 and 0 < on.l0 < 0.05 * 600
    with dispatch.configure(cpu_bf16=True), torch.no_grad():
        assert sae.codes(x) is not None  # the screen did run
    assert on.mse == pytest.approx(off.mse, **EXACT_FP32)
    assert on.l1 == pytest.approx(off.l1, **EXACT_FP32)
    assert torch.equal(on.frequency, off.frequency)


def test_the_training_loss_with_the_screen_matches_autograd():
    x, W, b = problem(300, 16, 500, seed=12)
    W_dec = torch.randn(500, 16, generator=torch.Generator().manual_seed(13)) * 0.1
    b_dec = torch.randn(16) * 0.1
    grads = {}
    for screen in (True, False):
        params = [t.clone().requires_grad_(True) for t in (W, b, W_dec, b_dec)]
        with dispatch.configure(cpu_bf16=screen):
            mse, l1, l0, fired = relu_sae_loss_cpu(x, *params, 1e-2)
        (mse + l1).backward()
        grads[screen] = (mse.detach(), l0, fired, [p.grad for p in params])
    a, b_ = grads[True], grads[False]
    torch.testing.assert_close(a[0], b_[0], rtol=1e-5, atol=1e-4)
    assert a[1] == b_[1] and torch.equal(a[2], b_[2])
    for ga, gb in zip(a[3], b_[3]):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)
