"""The fused encode and forward (stitchkit.ops.encode) against the torch reference (naive.py):
Triton under TRITON_INTERPRET=1 on the CPU in CI, on CUDA where present."""

import pytest
import torch

from stitchkit.ops.dispatch import configure
from stitchkit.ops.encode import triton as sae_forward_module
from stitchkit.ops.encode.naive import _codes_from_dense, sae_forward_reference
from stitchkit.ops.encode.triton import (
    COMPACTIONS,
    SCREEN_MIN_FEATURES,
    CompileMemo,
    _encode_config,
    default_encode_precision,
    encode_sparse_triton,
    encode_topk_filtered,
    encode_topk_triton,
    sae_forward_triton,
)
from tests.helpers import DEVICE, sae_tensors
from tests.tolerances import KERNEL


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
    tol = KERNEL[torch.float32]
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
    torch.testing.assert_close(got.l1, ref.l1, **KERNEL[torch.bfloat16])
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
    assert_codes_close(idx, val, ref.indices, ref.values, 53, KERNEL[torch.float32])
    torch.testing.assert_close(l0, ref.l0)
    torch.testing.assert_close(l1, ref.l1, **KERNEL[torch.float32])
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
    assert_codes_close(idx, val, ref.indices, ref.values, 53, KERNEL[torch.float32])
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
        assert_codes_close(idx, val, ref.indices, ref.values, 53, KERNEL[torch.float32])
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
        torch.testing.assert_close(got_l1, ref.l1, **KERNEL[torch.float32])
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


def test_encode_falls_back_to_a_compaction_that_compiles():
    # Triton 3.9 cannot compile the "atomic" compaction for sm_80 / sm_90 (a Triton failure,
    # bench/results/triton_compile_encode_*.json): a default encode must take another one.
    W_enc, b_enc, W_dec, b_dec, th = sae_tensors(19, 53, seed=8)
    x = torch.randn(37, 19, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    ref = sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec, th)
    tried = []
    real = CompileMemo()  # compiles for real (on a GPU; nothing to compile in the interpreter)

    def compile_encode(grid, args, consts):  # the real compile, after a pretended failure or not
        tried.append(consts["COMPACT"])
        if consts["COMPACT"] in broken:
            raise RuntimeError("PassManager::run failed")
        real.compile_only(grid, args, consts)

    memo = CompileMemo(compile=compile_encode)
    default = _encode_config(x)[1]
    broken = {default}
    compiles = []
    for _ in range(2):  # the second call compiles nothing: both outcomes are remembered
        idx, val, l1, l0 = encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=3, memo=memo)
        assert_codes_close(idx, val, ref.indices, ref.values, 53, KERNEL[torch.float32])
        torch.testing.assert_close(l0, ref.l0)
        compiles.append(len(tried))
    ran = memo.launched
    assert ran[0] != default and set(ran) == {ran[0]} and len(ran) == 4
    # The first encode tries the default, then the next ones until one compiles (on a GPU,
    # Triton itself may refuse one); its re-run of the overflowing tokens has the same
    # compile-time arguments, so it and the second call reuse that outcome.
    assert tried[0] == default and tried[-1] == ran[0] and len(set(tried)) == len(tried)
    assert compiles[0] == compiles[1] == len(tried)
    with pytest.raises(RuntimeError, match=f"compiled none of the slot compactions \\('{default}',\\)"):
        encode_sparse_triton(x - b_dec, W_enc, b_enc, th, compact=default, memo=memo)  # as asked
    broken = set(COMPACTIONS)
    fresh = CompileMemo(compile=compile_encode)  # as in a process where nothing compiled yet
    with pytest.raises(RuntimeError, match="PassManager::run failed") as err:
        encode_sparse_triton(x - b_dec, W_enc, b_enc, th, capacity=4, memo=fresh)
    assert all(c in str(err.value) for c in COMPACTIONS)


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
    torch.testing.assert_close(l1, ref.l1, **KERNEL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, d_sae, KERNEL[torch.float32])
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
    torch.testing.assert_close(l1, ref.l1, **KERNEL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, d_sae, KERNEL[torch.float32])
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
    torch.testing.assert_close(l1, ref.l1, **KERNEL[torch.float32])
    assert_codes_close(idx, val, ref.indices, ref.values, 40, KERNEL[torch.float32])
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
    assert_codes_close(idx, val, ref.indices, ref.values, 40, KERNEL[torch.float32])


@pytest.mark.parametrize("method", ["merge", "filter"])
def test_fused_topk_bf16_and_empty(method):
    bf = [t.bfloat16() for t in sae_tensors(24, 40, seed=4, bias=0.0)[:4]]
    x = torch.randn(21, 24, generator=torch.Generator().manual_seed(3)).to(DEVICE).bfloat16()
    got = sae_forward_triton(x, *bf, k=7, topk_method=method)
    ref = sae_forward_reference(x, *bf, k=7)
    torch.testing.assert_close(got.l1, ref.l1, **KERNEL[torch.bfloat16])
    torch.testing.assert_close(got.sq_err, ref.sq_err, rtol=2e-2, atol=2e-2)
    encode = encode_topk_filtered if method == "filter" else encode_topk_triton
    idx, val, l1, l0 = encode(torch.zeros(0, 24, device=DEVICE), bf[0].float(), bf[1].float(), 3)
    assert idx.shape == (0, 0) and l1.shape == (0,) and l0.shape == (0,)


def test_codes_from_dense():
    f = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    idx, val = _codes_from_dense(f)
    assert idx.tolist() == [[1, 3], [-1, -1], [0, -1]]
    assert val.tolist() == [[2.0, 1.0], [0.0, 0.0], [3.0, 0.0]]


def test_fp32_encodes_from_the_measured_width_up_default_to_the_screen():
    wide = SCREEN_MIN_FEATURES
    assert default_encode_precision(torch.float32, wide, on_gpu=True) == "screen"
    assert default_encode_precision(torch.float32, wide - 1, on_gpu=True) == "tf32x3"
    # The screen decides from the codes, so an L1/L0-only encode keeps tf32x3 (it would raise).
    assert default_encode_precision(torch.float32, wide, emit_codes=False, on_gpu=True) == "tf32x3"
    assert default_encode_precision(torch.bfloat16, wide, on_gpu=True) == "bf16"  # bf16 has no screen
    assert default_encode_precision(torch.float32, wide, on_gpu=False) == "ieee"  # the interpreter
    with configure(fp32_encode="tf32"):
        assert default_encode_precision(torch.float32, wide, on_gpu=True) == "tf32"
        assert default_encode_precision(torch.bfloat16, wide, on_gpu=True) == "bf16"
