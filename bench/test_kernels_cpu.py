"""CPU benchmarks of the SAE kernels' torch reference paths and the CPU fast paths dispatch uses
(embedding_bag decode, sparse-matrix decoder gradient), with pytest-benchmark, so regressions show.
The Triton kernels themselves are timed on a GPU by bench/kernels_gpu.py.

    python -m pytest bench/test_kernels_cpu.py --benchmark-enable [--benchmark-json out.json]

n = 4,096 tokens, d_in = 384, d_sae = 6,144, L0 ~50 (the demo's scale on the embedded model).
`-k training_step`: the relu + L1 loss's forward and backward, autograd on the plain torch loss
against ops.sae_loss.relu_sae_loss_cpu, at L0 ~50 and with about half the features active.
`-k evaluate_cpu`: stitchkit.evaluate on the CPU, its statistics and decode from f's nonzeros (the
default) against dense passes over f (the torch route, STITCHKIT_KERNELS=0).
`-k decode_dense`: SAE.decode of dense features f, the product f @ W_dec against decode_via_nonzeros
(nonzeros only), at 0.2-10% nonzero and at 6,144 x 384 and 24,576 x 768, for
ops.codes.cpu.DENSE_DECODE_MAX_DENSITY.
"""

import pytest
import torch

from stitchkit import SAE, evaluate
from stitchkit.ops.codes.cpu import coo_t_matmul, decode_via_nonzeros, slots_to_coo, sparse_decode_cpu
from stitchkit.ops.codes.naive import sparse_decode_reference, sparse_decoder_grad_reference
from stitchkit.ops.dispatch import configure
from stitchkit.ops.encode.naive import sae_forward_reference
from stitchkit.ops.gram import gram_cpu
from stitchkit.ops.sae_loss.cpu import relu_sae_loss_cpu
from stitchkit.ops.sae_loss.naive import relu_sae_loss_reference

N, D, F = 4096, 384, 6144


def sparse_decoder_grad_cpu(idx, val, g, d_sae):
    """ops.codes.sparse_decoder_grad's CPU route: the sparse code matrix's transpose times g."""
    return coo_t_matmul(*slots_to_coo(idx, val), (idx.shape[0], d_sae), g)


@pytest.fixture(scope="module")
def sae():
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(D, F, generator=g)
    W_enc /= W_enc.norm(dim=0, keepdim=True)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - 50 / F)).item()
    b_enc = torch.full((F,), -z)
    x = torch.randn(N, D, generator=g)
    return x, W_enc, b_enc, W_enc.t().contiguous(), torch.zeros(D)


def test_forward_reference_cpu(benchmark, sae):
    out = benchmark.pedantic(sae_forward_reference, sae, rounds=3, warmup_rounds=1)
    assert 20 < float(out.l0.mean()) < 100


@pytest.mark.parametrize(
    "fn", [sparse_decode_reference, sparse_decode_cpu], ids=["reference", "embedding_bag"]
)
def test_sparse_decode_cpu(benchmark, sae, fn):
    codes = sae_forward_reference(*sae)
    out, _ = benchmark.pedantic(fn, (codes.indices, codes.values, sae[3], sae[4]), rounds=3)
    assert out.shape == (N, D)


@pytest.mark.parametrize(
    "fn", [sparse_decoder_grad_reference, sparse_decoder_grad_cpu], ids=["reference", "sparse_mm"]
)
def test_sparse_decoder_grad_cpu(benchmark, sae, fn):
    codes = sae_forward_reference(*sae)
    g = torch.randn(N, D)
    out = benchmark.pedantic(fn, (codes.indices, codes.values, g, F), rounds=3)
    assert out.shape == (F, D)


@pytest.mark.parametrize("regime", ["l0_50", "half_active"])
@pytest.mark.parametrize("loss", ["reference", "cpu"])
def test_training_step_cpu(benchmark, sae, loss, regime):
    """Forward and backward of the relu + L1 loss: autograd on the plain torch loss against
    ops.sae_loss.relu_sae_loss_cpu (SAE.loss on the CPU), at L0 ~50 (its sparse route) and with
    b_enc = 0, about half the features active as at the start of training (its dense route)."""
    x, *weights = sae
    params = [w.clone().requires_grad_(True) for w in weights]
    if regime == "half_active":
        params[1] = torch.zeros_like(params[1], requires_grad=True)
    fn = relu_sae_loss_reference if loss == "reference" else relu_sae_loss_cpu

    def step():
        mse, l1, *_ = fn(x, *params, 1e-3)
        (mse + l1).backward()
        for p in params:
            p.grad = None

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.fixture(scope="module")
def frankenstein_codes():
    """Codes like the demo's last Frankenstein stage: 10,811 features, L0 about 220, a batch."""
    g = torch.Generator().manual_seed(1)
    n, F = 4096, 10_811
    return torch.rand(n, F, generator=g) * (torch.rand(n, F, generator=g) < 220 / F)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_gram_cpu(benchmark, frankenstein_codes, method):
    """f^T f into a float64 accumulator, as retrain_decoder(method="lstsq") adds each batch:
    the fp32 GEMM it used before, or gram_cpu's nonzero products (upper triangle)."""
    f = frankenstein_codes
    out = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
    if method == "sparse":
        gram_cpu(f[:64], out=out)  # numba compiles on first use; not part of the timing

    def dense():
        out.add_((f.T @ f).double())

    def sparse():
        gram_cpu(f, out=out)

    benchmark.pedantic(dense if method == "dense" else sparse, rounds=3, warmup_rounds=0)


@pytest.mark.parametrize("density", [0.002, 0.01, 0.03, 0.06, 0.1])
@pytest.mark.parametrize("shape", [(6144, 384), (24_576, 768)], ids=["6144x384", "24576x768"])
@pytest.mark.parametrize("method", ["matmul", "nonzero"])
def test_decode_via_nonzeros(benchmark, method, shape, density):
    g = torch.Generator().manual_seed(2)
    F, d = shape
    f = torch.rand(N, F, generator=g) * (torch.rand(N, F, generator=g) < density)
    W_dec, b_dec = torch.randn(F, d, generator=g), torch.randn(d, generator=g)
    # The nonzero route at every density measured (max_density 1: never declined).
    fn = (
        (lambda: f @ W_dec + b_dec)
        if method == "matmul"
        else (lambda: decode_via_nonzeros(f, W_dec, b_dec, 1.0))
    )
    out = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    torch.testing.assert_close(out, f @ W_dec + b_dec, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("route", ["dense", "nonzeros"])
def test_evaluate_cpu(benchmark, sae, route):
    x, W_enc, b_enc, W_dec, b_dec = sae
    model = SAE(D, F, "relu")
    with torch.no_grad():
        for p, w in zip((model.W_enc, model.b_enc, model.W_dec, model.b_dec), (W_enc, b_enc, W_dec, b_dec)):
            p.copy_(w)
    # dense: the torch route (STITCHKIT_KERNELS=0), the dense product and passes over all of f.
    with configure(kernels=route != "dense"):
        metrics = benchmark.pedantic(evaluate, (model, x), rounds=3, warmup_rounds=1)
    assert 20 < metrics.l0 < 100
