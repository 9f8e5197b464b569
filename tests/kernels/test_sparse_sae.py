"""Sparse decode, sparse decoder gradient and the fused SAE forward against their torch references
(Triton under TRITON_INTERPRET=1 on the CPU in CI, on CUDA where present)."""

import importlib

import pytest
import torch

from stitchkit.kernels import sae_forward as sae_forward_module
from stitchkit.kernels.dispatch import triton_installed, triton_interpreting
from stitchkit.kernels.sae_forward import (
    _codes_from_dense,
    encode_sparse_triton,
    encode_topk_filtered,
    encode_topk_triton,
    sae_forward_reference,
    sae_forward_triton,
)
from stitchkit.kernels.sparse_codes import (
    sparse_decode_reference,
    sparse_decode_triton,
    sparse_decoder_grad_atomic,
    sparse_decoder_grad_reference,
    sparse_decoder_grad_sorted,
)

pytestmark = pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
DEVICE = "cpu" if triton_interpreting() else "cuda"
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


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
    torch.testing.assert_close(got, ref, **TOL[dtype])
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


def sae_tensors(d_in, d_sae, seed, dtype=torch.float32, bias=-0.5):
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.full((d_sae,), bias) + 0.1 * torch.randn(d_sae, generator=g)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    b_dec = 0.1 * torch.randn(d_in, generator=g)
    th = 0.2 * torch.rand(d_sae, generator=g)
    return [t.to(DEVICE, dtype) for t in (W_enc, b_enc, W_dec, b_dec, th)]


def assert_codes_close(got_idx, got_val, ref_idx, ref_val, F, tol):
    dense = lambda i, v, F: torch.zeros(i.shape[0], F, device=DEVICE).scatter_add_(  # noqa: E731
        1, i.long().clamp_min(0), torch.where(i >= 0, v, 0.0)
    )
    torch.testing.assert_close(dense(got_idx, got_val, F), dense(ref_idx, ref_val, F), **tol)
    for i in (got_idx, ref_idx):  # ascending within each token, padding last
        key = torch.where(i >= 0, i, 1 << 30)
        assert (key[:, 1:] >= key[:, :-1]).all()


@pytest.mark.parametrize("jump", [False, True])
@pytest.mark.parametrize("n,d_in,d_sae", [(1, 1, 1), (37, 19, 53), (50, 33, 130), (3, 8, 17)])
def test_fused_forward_matches_reference(n, d_in, d_sae, jump):
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(d_in, d_sae, seed=n + d_sae)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(d_in)).to(DEVICE)
    x[0] = b_dec - 100.0 * W_enc.sum(1) / W_enc.sum(1).norm()  # a token far on the negative side
    args = (x, W_enc, b_enc, W_dec, b_dec, th if jump else None)
    got = sae_forward_triton(*args, capacity=2)  # forces the overflow re-run on wide rows
    ref = sae_forward_reference(*args)
    tol = TOL[torch.float32]
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.l1, ref.l1, **tol)
    torch.testing.assert_close(got.l0, ref.l0)
    assert_codes_close(got.indices, got.values, ref.indices, ref.values, d_sae, tol)
    assert got.indices.shape[1] == int(ref.l0.max())


def test_fused_forward_all_features_active_and_bf16():
    W_enc, b_enc, W_dec, b_dec, _ = sae_tensors(24, 40, seed=2, bias=50.0)  # every pre > 0
    x = torch.randn(21, 24, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    got = sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec)
    assert (got.l0 == 40).all() and (got.indices >= 0).all()
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec)
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=1e-4, atol=1e-3)
    bf = [t.bfloat16() for t in sae_tensors(24, 40, seed=4)[:4]]
    xb = x.bfloat16()
    got = sae_forward_triton(xb, *bf)
    ref = sae_forward_reference(xb, *bf)
    torch.testing.assert_close(got.l1, ref.l1, **TOL[torch.bfloat16])
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("precision", [None, "screen"])
def test_overflow_reencodes_only_the_wide_tokens(precision, monkeypatch):
    W_enc, b_enc, W_dec, b_dec, _ = sae_tensors(19, 53, seed=12)
    x = torch.randn(40, 19, generator=torch.Generator().manual_seed(13)).to(DEVICE)
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec)
    cap = int(ref.l0.median())
    rows = []
    slots = sae_forward_module._encode_slots
    monkeypatch.setattr(
        sae_forward_module, "_encode_slots", lambda x, *a, **k: rows.append(len(x)) or slots(x, *a, **k)
    )
    idx, val, l1, l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, capacity=cap, precision=precision)
    assert_codes_close(idx, val, ref.indices, ref.values, 53, TOL[torch.float32])
    torch.testing.assert_close(l0, ref.l0)
    torch.testing.assert_close(l1, ref.l1, **TOL[torch.float32])
    assert rows[0] == 40 and len(rows) == 2
    if precision is None:  # the screen counts candidates, a superset of the active features
        assert rows[1] == int((ref.l0 > cap).sum())
    assert 0 < rows[1] < 40


def encode_or_skip(*args, **kwargs):
    """encode_sparse_triton with a named compaction, skipped where this Triton cannot compile it for
    the GPU at hand (Triton 3.9: "atomic" on sm_80 / sm_90; the default encode falls back)."""
    try:
        return encode_sparse_triton(*args, **kwargs)
    except RuntimeError as err:
        if DEVICE == "cuda" and "compiled none of the slot compactions" in str(err):
            pytest.skip(str(err)[:200])
        raise


@pytest.mark.parametrize("compact", ["cumsum", "atomic", "peel"])
def test_encode_compaction_variants_agree(compact):
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(19, 53, seed=8)
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    idx, val, l1, l0 = encode_or_skip(x - b_dec, W_enc, b_enc, th, capacity=3, compact=compact)
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, th)
    assert_codes_close(idx, val, ref.indices, ref.values, 53, TOL[torch.float32])
    torch.testing.assert_close(l0, ref.l0)


@pytest.mark.parametrize("compact", ["cumsum", "atomic", "peel"])
@pytest.mark.parametrize("precision", [None, "screen"])
def test_encode_compactions_keep_every_tied_hit(compact, precision):
    # Small integers: every pre-activation is exact in each arithmetic, so a row holds many
    # exactly equal values (the peel takes one per round by a row max). Token 0 has no active
    # feature, the last one all 53 (more than the 3 slots, and than a tile's width).
    g = torch.Generator().manual_seed(21)
    n, d_in, F = 41, 6, 53
    W_enc = torch.randint(-2, 3, (d_in, F), generator=g).float()
    W_enc[0] = torch.randint(1, 3, (F,), generator=g).float()
    b_enc = torch.randint(-3, 2, (F,), generator=g).float()
    x = torch.randint(-2, 3, (n, d_in), generator=g).float()
    x[0], x[-1] = 0.0, 0.0
    x[0, 0], x[-1, 0] = -10.0, 10.0
    W_enc, b_enc, x = W_enc.to(DEVICE), b_enc.to(DEVICE), x.to(DEVICE)
    pre = x @ W_enc + b_enc
    idx, val, l1, l0 = encode_or_skip(x, W_enc, b_enc, capacity=3, precision=precision, compact=compact)
    want = torch.relu(pre)
    got = torch.zeros(n, F, device=DEVICE).scatter_add_(
        1, idx.long().clamp_min(0), torch.where(idx >= 0, val, 0.0)
    )
    assert torch.equal(got, want)
    assert torch.equal(l0, (pre > 0).sum(1).float()) and l0[0] == 0 and l0[-1] == F
    assert torch.equal(l1, want.sum(1))
    repeats = torch.stack([torch.bincount(r[r > 0].long(), minlength=9).max() for r in pre])
    assert repeats.max() >= 5  # rows with five or more equal positive values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_reads_w_enc_in_either_layout(dtype):
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(19, 53, seed=14, dtype=dtype)
    xin = torch.randn(37, 19, generator=torch.Generator().manual_seed(15)).to(DEVICE, dtype)
    # The kernel's arithmetic: products of the dtype's values, summed in fp32.
    ref = sae_forward_reference(*(t.float() for t in (xin, W_enc, b_enc, W_dec, b_dec, th)), False)
    got = {}
    for layout in ("k-major", "n-major"):
        got[layout] = encode_sparse_triton(xin, W_enc, b_enc, th, capacity=3, w_layout=layout)
        idx, val, l1, l0 = got[layout]
        assert_codes_close(idx, val, ref.indices, ref.values, 53, TOL[torch.float32])
        torch.testing.assert_close(l0, ref.l0)
    assert all(torch.equal(a, b) for a, b in zip(got["k-major"], got["n-major"]))
    assert (ref.l0 > 3).any()  # some tokens overflow the 3 slots and are encoded again
    with pytest.raises(ValueError, match="w_layout"):
        encode_sparse_triton(xin, W_enc, b_enc, w_layout="row-major")


def test_encode_statistics_without_codes_are_those_of_the_codes():
    # With codes, L1 and L0 are summed from them; without, the kernel writes per-block partials.
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(19, 53, seed=16)
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(17)).to(DEVICE)
    x[0] = b_dec  # pre = b_enc < 0: no active feature
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, th)
    idx, val, l1, l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=3)
    none_idx, none_val, none_l1, none_l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, th, emit_codes=False)
    assert none_idx.shape[1] == 0 and none_val.shape[1] == 0
    for got_l1, got_l0 in ((l1, l0), (none_l1, none_l0)):
        torch.testing.assert_close(got_l1, ref.l1, **TOL[torch.float32])
        torch.testing.assert_close(got_l0, ref.l0)
    assert torch.equal(l0, (idx >= 0).sum(1).float()) and (ref.l0 > 3).any() and (ref.l0 == 0).any()


def test_named_bf16_arithmetic_is_the_default_one():
    # In the interpreter a bf16 tl.dot computes garbage; a caller naming "bf16" gets its stand-in.
    W_enc, b_enc, _, _, _ = sae_tensors(19, 53, seed=18, dtype=torch.bfloat16)
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(19)).to(DEVICE, torch.bfloat16)
    for encode in (encode_sparse_triton, lambda *a, **k: encode_topk_triton(*a, 5, **k)):
        default, named = encode(x, W_enc, b_enc), encode(x, W_enc, b_enc, precision="bf16")
        assert all(torch.equal(a, b) for a, b in zip(default, named))
        assert (default[3] > 0).any()


def test_encode_arguments_are_checked():
    W_enc, b_enc, _, _, _ = sae_tensors(19, 53, seed=20)
    x = torch.randn(5, 19, generator=torch.Generator().manual_seed(21)).to(DEVICE)
    with pytest.raises(ValueError, match="encode_sparse_triton: compact must be one of .*'cumsun'"):
        encode_sparse_triton(x, W_enc, b_enc, compact="cumsun")
    with pytest.raises(ValueError, match="encode_sparse_triton: precision must be one of .*'fp16'"):
        encode_sparse_triton(x, W_enc, b_enc, precision="fp16")
    with pytest.raises(ValueError, match="encode_topk_triton: precision must be one of"):
        encode_topk_triton(x, W_enc, b_enc, 3, precision="tf64")
    with pytest.raises(ValueError, match="encode_topk_triton: merge must be 'topk' or 'sort', got 'heap'"):
        encode_topk_triton(x, W_enc, b_enc, 3, merge="heap")
    with pytest.raises(ValueError, match="encode_topk_filtered: precision must be one of"):
        encode_topk_filtered(x, W_enc, b_enc, 3, precision="fp16")


def test_encode_falls_back_to_a_compaction_that_compiles(monkeypatch):
    # Triton 3.9 cannot compile the "atomic" compaction for sm_80 / sm_90 (a Triton failure,
    # bench/results/triton_compile_encode_*.json): a default encode must take another one.
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(19, 53, seed=8)
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, th)
    tried, ran = [], []
    real_compile = sae_forward_module._compile_encode

    def compile_encode(grid, args, consts):  # the real compile, after a pretended failure or not
        tried.append(consts["COMPACT"])
        if consts["COMPACT"] in broken:
            raise RuntimeError("PassManager::run failed")
        real_compile(grid, args, consts)

    launch = sae_forward_module._launch_encode
    monkeypatch.setattr(sae_forward_module, "_UNCOMPILABLE", set())
    monkeypatch.setattr(sae_forward_module, "_COMPILED", set())
    monkeypatch.setattr(sae_forward_module, "_compile_encode", compile_encode)
    monkeypatch.setattr(sae_forward_module, "_launch_encode", lambda *a: ran.append(launch(*a)) or ran[-1])
    default = sae_forward_module._encode_config(x)[1]
    broken = {default}
    compiles = []
    for _ in range(2):  # the second call compiles nothing: both outcomes are remembered
        idx, val, l1, l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=3)
        assert_codes_close(idx, val, ref.indices, ref.values, 53, TOL[torch.float32])
        torch.testing.assert_close(l0, ref.l0)
        compiles.append(len(tried))
    assert ran[0] != default and set(ran) == {ran[0]} and len(ran) == 4
    # The first encode tries the default, then the next ones until one compiles (on a GPU,
    # Triton itself may refuse one); its re-run of the overflowing tokens has the same
    # compile-time arguments, so it and the second call reuse that outcome.
    assert tried[0] == default and tried[-1] == ran[0] and len(set(tried)) == len(tried)
    assert compiles[0] == compiles[1] == len(tried)
    with pytest.raises(RuntimeError, match=f"compiled none of the slot compactions \\('{default}',\\)"):
        encode_sparse_triton(x - b_dec, W_enc, b_enc, th, compact=default)  # as asked, no fallback
    broken = set(sae_forward_module.COMPACTIONS)
    sae_forward_module._COMPILED.clear()  # as in a process where nothing compiled yet
    with pytest.raises(RuntimeError, match="PassManager::run failed") as err:
        encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=4)
    assert all(c in str(err.value) for c in sae_forward_module.COMPACTIONS)


@pytest.mark.parametrize("jump", [False, True])
@pytest.mark.parametrize("n,d_in,d_sae", [(1, 1, 1), (37, 19, 53), (50, 33, 130)])
def test_screened_encode_is_the_fp32_encode(n, d_in, d_sae, jump):
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(d_in, d_sae, seed=n + d_sae + 1)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(d_in + 1)).to(DEVICE)
    # Token 0 sits 1e-4 from every feature's cut, where bf16 products (error ~1e-2) cannot
    # decide: only the fp32 recomputation of the candidates can.
    sign = torch.where(torch.arange(d_sae, device=DEVICE) % 2 == 0, 1.0, -1.0)
    cut = th if jump else torch.zeros_like(th)
    b_enc = cut - (x[0] - b_dec) @ W_enc + 1e-4 * sign
    th = th if jump else None
    idx, val, l1, l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=2, precision="screen")
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, th)
    torch.testing.assert_close(l0, ref.l0)
    torch.testing.assert_close(l1, ref.l1, **TOL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, d_sae, TOL[torch.float32])
    assert idx.shape[1] == int(ref.l0.max())
    assert l0[0] == ((sign > 0) & (cut + 1e-4 > 0)).sum()  # the features just above their cut
    with pytest.raises(ValueError, match="needs the codes"):
        encode_sparse_triton(x - b_dec, W_enc, b_enc, th, precision="screen", emit_codes=False)


def test_encode_sparse_empty_batch():
    W_enc, b_enc, *_ = sae_tensors(8, 5, seed=1)
    idx, val, l1, l0 = encode_sparse_triton(torch.zeros(0, 8, device=DEVICE), W_enc, b_enc)
    assert idx.shape[0] == 0 and l1.shape == (0,)


def topk_encode(method):
    """encode_topk_triton with a merge variant, or the filter with a sample of about half the
    features (so the cut comes from a real sample, not from every feature)."""
    if method == "topk" and not hasattr(__import__("triton").language, "topk"):
        pytest.skip("this Triton has no tl.topk")
    if method == "filter":
        return lambda x, W, b, k: encode_topk_filtered(x, W, b, k, candidates=2 * k + 1)
    return lambda x, W, b, k: encode_topk_triton(x, W, b, k, merge=method)


@pytest.mark.parametrize("method", ["topk", "sort", "filter"])
@pytest.mark.parametrize(
    "n,d_in,d_sae,k",
    [(1, 1, 1, 1), (37, 19, 53, 5), (12, 8, 70, 20), (9, 12, 33, 33), (5, 7, 30, 50), (18, 16, 16, 1)],
)
def test_fused_topk_matches_reference(n, d_in, d_sae, k, method, poison_empty):
    W_enc, b_enc, W_dec, b_dec, _ = sae_tensors(d_in, d_sae, seed=n + k, bias=0.0)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(d_in)).to(DEVICE)
    x[0] = b_dec - 100.0 * W_enc.sum(1) / W_enc.sum(1).norm()  # few or no positive pre-activations
    xin = x - b_dec
    encode = topk_encode(method)
    poison = poison_empty()  # the kernel must write every output
    idx, val, l1, l0 = encode(xin, W_enc, b_enc, k)
    poison.undo()
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, k=k)
    torch.testing.assert_close(l0, ref.l0)
    torch.testing.assert_close(l1, ref.l1, **TOL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, d_sae, TOL[torch.float32])
    assert idx.shape[1] == int(ref.l0.max()) and (l0 <= min(k, d_sae)).all()
    got = sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec, k=k)
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["topk", "sort", "filter"])
def test_fused_topk_ties_go_to_the_smaller_feature(method):
    # Features j and j + 20 are the same feature, so every value comes twice, and an odd k
    # splits a tied pair at the boundary; the dense rows check the kept ones are the k largest.
    # Small integers make every product and partial sum exact in fp32, tf32 and bf16, so a tie
    # stays a tie whatever order the dot sums in (Triton 3.9's interpreter rounds two equal
    # columns differently by their place in the tile); they also tie unrelated features.
    g = torch.Generator().manual_seed(5)
    W_enc = torch.randint(-3, 4, (10, 20), generator=g).float()
    b_enc = torch.randint(-2, 3, (20,), generator=g).float() + 0.5
    W_enc, b_enc = torch.cat([W_enc, W_enc], 1).to(DEVICE), torch.cat([b_enc, b_enc]).to(DEVICE)
    x = torch.randint(-3, 4, (23, 10), generator=g).float().to(DEVICE)
    pre = x @ W_enc + b_enc
    encode = topk_encode(method)
    for k in (1, 5, 17):
        idx, val, _, l0 = encode(x, W_enc, b_enc, k)
        expect = torch.sort(-pre, dim=1, stable=True).indices[:, :k]  # value desc, then index asc
        positive = pre.gather(1, expect) > 0
        for t in range(x.shape[0]):
            want = set(expect[t][positive[t]].tolist())
            assert set(idx[t][idx[t] >= 0].tolist()) == want, (k, t)
        assert (l0 == positive.sum(1)).all()


def test_topk_filter_with_an_unrepresentative_sample():
    # The sample is every second feature; the others are the large ones, so the cut is low and
    # every token has more candidates than its 4 slots (they are encoded again).
    W_enc, b_enc, W_dec, b_dec, _ = sae_tensors(12, 40, seed=7, bias=0.0)
    b_enc[1::2] += 3.0
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    idx, val, l1, l0 = encode_topk_filtered(x - b_dec, W_enc, b_enc, 3, candidates=7, capacity=4)
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, k=3)
    torch.testing.assert_close(l0, ref.l0)
    torch.testing.assert_close(l1, ref.l1, **TOL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, 40, TOL[torch.float32])
    assert (idx % 2 == 1).all()


def test_topk_filter_is_exact_when_its_cut_is_too_high(monkeypatch):
    # A cut from a matmul far off (every sampled value 10 too high) leaves tokens with fewer
    # than k candidates; their positive features are encoded again, so nothing is lost.
    W_enc, b_enc, W_dec, b_dec, _ = sae_tensors(12, 40, seed=9, bias=0.2)
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: addmm(*a, **kw) + 10.0)
    idx, val, l1, l0 = encode_topk_filtered(x - b_dec, W_enc, b_enc, 4, candidates=9)
    monkeypatch.undo()
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, k=4)
    torch.testing.assert_close(l0, ref.l0)
    assert_codes_close(idx, val, ref.indices, ref.values, 40, TOL[torch.float32])


@pytest.mark.parametrize("method", ["merge", "filter"])
def test_fused_topk_bf16_and_empty(method, monkeypatch):
    monkeypatch.setattr(sae_forward_module, "TOPK_METHOD", method)
    bf = [t.bfloat16() for t in sae_tensors(24, 40, seed=4, bias=0.0)[:4]]
    x = torch.randn(21, 24, generator=torch.Generator().manual_seed(3)).to(DEVICE).bfloat16()
    got = sae_forward_triton(x, *bf, k=7)
    ref = sae_forward_reference(x, *bf, k=7)
    torch.testing.assert_close(got.l1, ref.l1, **TOL[torch.bfloat16])
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=2e-2, atol=2e-2)
    encode = encode_topk_filtered if method == "filter" else encode_topk_triton
    idx, val, l1, l0 = encode(torch.zeros(0, 24, device=DEVICE), bf[0].float(), bf[1].float(), 3)
    assert idx.shape == (0, 0) and l1.shape == (0,) and l0.shape == (0,)


def test_codes_from_dense():
    f = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    idx, val = _codes_from_dense(f)
    assert idx.tolist() == [[1, 3], [-1, -1], [0, -1]]
    assert val.tolist() == [[2.0, 1.0], [0.0, 0.0], [3.0, 0.0]]


@pytest.mark.parametrize("apply", [True, False])
@pytest.mark.parametrize("n,d_in,d_sae", [(1, 3, 5), (37, 19, 53), (64, 16, 130)])
def test_training_loss_gradients_match_autograd(n, d_in, d_sae, apply):
    from stitchkit.kernels.sae_train import relu_sae_loss, relu_sae_loss_reference

    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    params = [t.clone().requires_grad_(True) for t in sae_tensors(d_in, d_sae, seed=d_sae, bias=-0.2)[:4]]
    ref_params = [t.detach().clone().requires_grad_(True) for t in params]
    mse, l1, l0 = relu_sae_loss(x, *params, 0.3, apply)
    rmse, rl1, rl0 = relu_sae_loss_reference(x, *ref_params, 0.3, apply)
    torch.testing.assert_close(mse, rmse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l1, rl1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l0, rl0)
    assert not l0.requires_grad
    (mse + l1).backward()
    (rmse + rl1).backward()
    for name, p, r in zip(["W_enc", "b_enc", "W_dec", "b_dec"], params, ref_params):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5, msg=name)


LIBRARY_MODULES = ("stitchkit.sae", "stitchkit.evaluate", "stitchkit.retrain")


@pytest.fixture
def kernels_on(monkeypatch):
    """Route the library's SAE code through the Triton paths (interpreted on the CPU in CI)."""
    for mod in LIBRARY_MODULES:
        monkeypatch.setattr(importlib.import_module(mod), "use_kernels", lambda device: True)


def test_fp32_encodes_from_the_measured_width_up_default_to_the_screen(monkeypatch):
    from stitchkit.kernels import sae_forward

    monkeypatch.setattr(sae_forward, "default_precision", lambda x: "tf32x3")  # as on a GPU
    x = torch.zeros(2, 3)
    wide = sae_forward.SCREEN_MIN_FEATURES
    assert sae_forward.default_encode_precision(x, wide) == "screen"
    assert sae_forward.default_encode_precision(x, wide - 1) == "tf32x3"
    # The screen decides from the codes, so an L1/L0-only encode keeps tf32x3 (it would raise).
    assert sae_forward.default_encode_precision(x, wide, emit_codes=False) == "tf32x3"
    monkeypatch.setattr(sae_forward, "default_precision", lambda x: "bf16")
    assert sae_forward.default_encode_precision(x.bfloat16(), wide) == "bf16"  # bf16 has no screen


@pytest.mark.parametrize("case", ["relu", "relu-screen", "topk", "topk-merge"])
def test_library_paths_through_kernels_match_the_reference(kernels_on, monkeypatch, case):
    from stitchkit import SAE, evaluate, retrain_decoder, train_sae
    from stitchkit.kernels import sae_forward

    if case == "relu-screen":  # the fp32 screen as the default route, here under the interpreter
        monkeypatch.setattr(sae_forward, "default_encode_precision", lambda x, n, emit_codes=True: "screen")
    if case == "topk-merge":
        monkeypatch.setattr(sae_forward, "TOPK_METHOD", "merge")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 12, generator=g).to(DEVICE)
    batches = list(x.split(40))
    relu = not case.startswith("topk")
    if relu:
        sae = SAE(12, 30, l1_coefficient=0.1, name="k", generator=g).to(DEVICE)
        with torch.no_grad():
            sae.b_enc.fill_(-0.3)
    else:
        sae = SAE(12, 40, activation="topk", k=6, name="t", generator=g).to(DEVICE)
    fused = evaluate(sae, batches)
    if relu:  # the training kernel is the relu SAE's
        trained = train_sae(batches, 12, 30, l1_coefficient=0.1, lr=1e-2, seed=3)
    refit = retrain_decoder(sae, batches, method="adam", lr=1e-2)
    for mod in LIBRARY_MODULES:
        monkeypatch.setattr(importlib.import_module(mod), "use_kernels", lambda device: False)
    plain = evaluate(sae, batches)
    assert fused.mse == pytest.approx(plain.mse, rel=1e-5)
    assert fused.l0 == pytest.approx(plain.l0) and fused.l1 == pytest.approx(plain.l1, rel=1e-5)
    assert torch.equal(fused.frequency, plain.frequency)
    if relu:
        trained_plain = train_sae(batches, 12, 30, l1_coefficient=0.1, lr=1e-2, seed=3)
        torch.testing.assert_close(trained.W_dec, trained_plain.W_dec, rtol=1e-4, atol=1e-5)
    refit_plain = retrain_decoder(sae, batches, method="adam", lr=1e-2)
    torch.testing.assert_close(refit.sae.W_dec, refit_plain.sae.W_dec, rtol=1e-4, atol=1e-5)


def test_sparse_rowdot_matches_reference():
    from stitchkit.kernels.sparse_codes import sparse_rowdot_reference, sparse_rowdot_triton

    idx, _ = random_codes(37, 5, 53, seed=2)
    g = torch.randn(37, 19, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    W = torch.randn(53, 19, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    got = sparse_rowdot_triton(idx, g, W)
    torch.testing.assert_close(got, sparse_rowdot_reference(idx, g, W), rtol=1e-5, atol=1e-5)
    assert (got[idx < 0] == 0).all()


def test_coactivation_reference_against_dense():
    from stitchkit.kernels.sparse_codes import coactivation_reference

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
    from stitchkit.kernels import compiled
    from stitchkit.kernels.sparse_codes import coactivation_reference

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


def test_activation_similarity_from_codes_matches_dense(monkeypatch):
    from stitchkit import SAE, activation_similarity
    from stitchkit.kernels import compiled

    g = torch.Generator().manual_seed(7)
    small, large = SAE(10, 13, name="s", generator=g), SAE(10, 29, name="l", generator=g)
    with torch.no_grad():
        small.b_enc.fill_(-0.5)
        large.b_enc.fill_(-0.8)
    small, large = small.to(DEVICE), large.to(DEVICE)
    x = torch.randn(120, 10, generator=g).to(DEVICE)
    dense = activation_similarity(large, small, [x[:50], x[50:]])
    ev = importlib.import_module("stitchkit.evaluate")
    monkeypatch.setattr(ev, "use_kernels", lambda device: True)
    built = compiled.available()
    monkeypatch.setattr(compiled, "available", lambda: True)  # take the codes path even without the build
    from stitchkit.kernels.sparse_codes import coactivation_reference

    calls = []
    real = ev.coactivation if built else coactivation_reference
    monkeypatch.setattr(ev, "coactivation", lambda *a: calls.append(1) or real(*a))
    codes = activation_similarity(large, small, [x[:50], x[50:]])
    assert len(calls) == 2  # one per batch: the codes path ran
    live = dense.indices >= 0
    assert torch.equal(codes.indices[live], dense.indices[live])
    torch.testing.assert_close(codes.values[live], dense.values[live], rtol=1e-5, atol=1e-5)


def test_cpu_fast_paths_match_references():
    from stitchkit.kernels.sparse_codes import sparse_decode_cpu, sparse_decoder_grad_cpu

    idx, val = random_codes(37, 5, 53, seed=11)
    idx, val = idx.cpu(), val.cpu()
    g = torch.Generator().manual_seed(12)
    W, b, x = torch.randn(53, 19, generator=g), torch.randn(19, generator=g), torch.randn(37, 19, generator=g)
    got, err = sparse_decode_cpu(idx, val, W, b, x)
    ref, ref_err = sparse_decode_reference(idx, val, W, b, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(err, ref_err, rtol=1e-5, atol=1e-5)
    gout = torch.randn(37, 19, generator=g)
    torch.testing.assert_close(
        sparse_decoder_grad_cpu(idx, val, gout, 53),
        sparse_decoder_grad_reference(idx, val, gout, 53),
        rtol=1e-5,
        atol=1e-5,
    )
    empty = torch.full((4, 3), -1)
    assert torch.equal(sparse_decoder_grad_cpu(empty, torch.zeros(4, 3), gout[:4], 53), torch.zeros(53, 19))
