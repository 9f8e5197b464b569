"""Sparse codes (stitchkit.ops.codes): decode, decoder gradient, row dots and co-activation, each
implementation (Triton under TRITON_INTERPRET=1 on the CPU in CI, CPU, csrc) against naive.py."""

import pytest
import torch

from stitchkit.ops.codes.naive import sparse_decode_reference, sparse_decoder_grad_reference
from stitchkit.ops.codes.triton import (
    sparse_decode_triton,
    sparse_decoder_grad_atomic,
    sparse_decoder_grad_sorted,
)
from tests.helpers import DEVICE
from tests.tolerances import KERNEL


def random_codes(n, k, d_sae, seed, empty_fraction=0.3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(d_sae, (n, k), generator=g)
    idx[torch.rand(n, k, generator=g) < empty_fraction] = -1
    if n > 2:
        idx[1] = -1  # a token with no active feature
    val = torch.rand(n, k, generator=g).to(dtype)
    val[idx < 0] = float("nan")  # empty slots' values must be ignored
    return idx.to(DEVICE), val.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,d,d_sae", [(1, 1, 1, 1), (37, 5, 19, 53), (70, 1, 130, 9), (9, 12, 33, 4)])
def test_sparse_decode_matches_reference(n, k, d, d_sae, dtype):
    g = torch.Generator().manual_seed(n * 7 + d)
    idx, val = random_codes(n, k, d_sae, seed=n + k, dtype=dtype)
    W = torch.randn(d_sae, d, generator=g).to(DEVICE, dtype)
    b = torch.randn(d, generator=g).to(DEVICE, dtype)
    x = torch.randn(n, d, generator=g).to(DEVICE)
    poisoned = torch.full((n, d), float("nan"), device=DEVICE)
    got, err = sparse_decode_triton(idx, val, W, b, x, out=poisoned)
    ref, ref_err = sparse_decode_reference(idx, val, W, b, x)
    assert got.data_ptr() == poisoned.data_ptr()
    torch.testing.assert_close(got, ref, **KERNEL[dtype])
    torch.testing.assert_close(err, ref_err, rtol=1e-4, atol=1e-4)
    if n > 2:
        torch.testing.assert_close(got[1], b.float().expand(d))  # no active feature: b_dec
    assert sparse_decode_triton(idx, val, W, b)[1] is None


@pytest.mark.parametrize("method", ["atomics", "sorted"])
@pytest.mark.parametrize("n,k,d,d_sae", [(1, 1, 1, 1), (37, 5, 19, 53), (64, 3, 130, 2), (5, 7, 16, 300)])
def test_sparse_decoder_grad_matches_reference(method, n, k, d, d_sae):
    idx, val = random_codes(n, k, d_sae, seed=3 * n + d)
    gout = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).to(DEVICE)
    fn = sparse_decoder_grad_atomic if method == "atomics" else sparse_decoder_grad_sorted
    got = fn(idx, val, gout, d_sae)
    ref = sparse_decoder_grad_reference(idx, val, gout, d_sae)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # Against the dense definition F^T g.
    dense = torch.zeros(n, d_sae, device=DEVICE)
    ok = idx >= 0
    dense.index_put_(
        (torch.arange(n, device=DEVICE)[:, None].expand(n, k)[ok], idx[ok]), val[ok], accumulate=True
    )
    torch.testing.assert_close(got, dense.T @ gout, rtol=1e-4, atol=1e-4)


def test_sparse_decoder_grad_sorted_is_deterministic_and_handles_no_entries():
    idx, val = random_codes(200, 6, 11, seed=5)
    gout = torch.randn(200, 40, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    a = sparse_decoder_grad_sorted(idx, val, gout, 11)
    assert torch.equal(a, sparse_decoder_grad_sorted(idx, val, gout, 11))
    empty = torch.full((4, 3), -1, device=DEVICE)
    z = sparse_decoder_grad_sorted(empty, torch.zeros(4, 3, device=DEVICE), gout[:4], 11)
    assert torch.equal(z, torch.zeros(11, 40, device=DEVICE))


def test_sparse_rowdot_matches_reference():
    from stitchkit.ops.codes.naive import sparse_rowdot_reference
    from stitchkit.ops.codes.triton import sparse_rowdot_triton

    idx, _ = random_codes(37, 5, 53, seed=2)
    g = torch.randn(37, 19, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    W = torch.randn(53, 19, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    got = sparse_rowdot_triton(idx, g, W)
    torch.testing.assert_close(got, sparse_rowdot_reference(idx, g, W), rtol=1e-5, atol=1e-5)
    assert (got[idx < 0] == 0).all()


def test_coactivation_reference_against_dense():
    from stitchkit.ops.codes.naive import coactivation_reference

    ia, va = random_codes(37, 4, 11, seed=1)
    ib, vb = random_codes(37, 3, 7, seed=2)
    got = coactivation_reference(ia, va, ib, vb, 11, 7)

    def dense(i, v, F):  # token by token, from the definition
        rows = [
            torch.zeros(F, device=DEVICE).index_add(0, i[t][i[t] >= 0].long(), v[t][i[t] >= 0])
            for t in range(len(i))
        ]
        return torch.stack(rows)

    torch.testing.assert_close(got, dense(ia, va, 11).T @ dense(ib, vb, 7), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_extension_matches_references():
    from stitchkit.ops import compiled
    from stitchkit.ops.codes.naive import coactivation_reference

    if not compiled.available():
        pytest.skip("the csrc extension is not built here")
    idx, val = random_codes(500, 7, 301, seed=3)
    g = torch.randn(500, 65, device="cuda")
    got = compiled.sparse_decoder_grad_segmented(idx, val, g, 301)
    torch.testing.assert_close(got, sparse_decoder_grad_reference(idx, val, g, 301), rtol=1e-5, atol=1e-5)
    assert torch.equal(got, compiled.sparse_decoder_grad_segmented(idx, val, g, 301))  # deterministic
    empty = torch.full((3, 2), -1, device="cuda")
    assert torch.equal(
        compiled.sparse_decoder_grad_segmented(empty, val[:3, :2], g[:3], 5),
        torch.zeros(5, 65, device="cuda"),
    )
    ib, vb = random_codes(500, 4, 90, seed=4)
    torch.testing.assert_close(
        compiled.coactivation(idx, val, ib, vb, 301, 90),
        coactivation_reference(idx, val, ib, vb, 301, 90),
        rtol=1e-4,
        atol=1e-4,
    )


def test_cpu_fast_paths_match_references():
    from stitchkit.ops.codes import sparse_decoder_grad
    from stitchkit.ops.codes.cpu import sparse_decode_cpu
    from stitchkit.ops.dispatch import configure, op_route

    idx, val = random_codes(37, 5, 53, seed=11)
    idx, val = idx.cpu(), val.cpu()
    g = torch.Generator().manual_seed(12)
    W, b, x = torch.randn(53, 19, generator=g), torch.randn(19, generator=g), torch.randn(37, 19, generator=g)
    got, err = sparse_decode_cpu(idx, val, W, b, x)
    ref, ref_err = sparse_decode_reference(idx, val, W, b, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(err, ref_err, rtol=1e-5, atol=1e-5)
    gout = torch.randn(37, 19, generator=g)
    with configure(interpret=False):  # the dispatcher's CPU route (a sparse matrix product)
        assert op_route(gout.device) == "cpu"
        got_grad = sparse_decoder_grad(idx, val, gout, 53)
        empty_grad = sparse_decoder_grad(torch.full((4, 3), -1), torch.zeros(4, 3), gout[:4], 53)
    torch.testing.assert_close(
        got_grad,
        sparse_decoder_grad_reference(idx, val, gout, 53),
        rtol=1e-5,
        atol=1e-5,
    )
    assert torch.equal(empty_grad, torch.zeros(53, 19))
