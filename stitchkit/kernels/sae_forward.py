"""The SAE evaluation forward pass in one fused encode and one sparse decode, never writing the
dense [n, d_sae] activation matrix.

    sae_forward(x [n, d_in], W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in],
                threshold [F] | None, apply_b_dec_to_input, k: int | None) -> ForwardStats
        pre = (x - b_dec) W_enc + b_enc (x W_enc + b_enc without the input shift);
        f = ReLU(pre), and with a threshold f = ReLU(pre) * (pre > threshold) (JumpReLU), and
        with k f = ReLU of each token's k largest pre-activations, the rest 0 (TopK);
        x_hat = b_dec + f W_dec. Returns per-token squared error |x - x_hat|^2, L1 = sum f and
        L0 = #(f > 0) [n] (fp32), and the codes: indices [n, c] int32 (ascending, -1 = empty
        slot) and values [n, c] fp32, c = the largest L0 in the batch.

The fused encode computes each [BLOCK_M tokens x BLOCK_N features] tile of pre with tl.dot, applies
the activation in registers, and appends the tile's active (feature, value) pairs to each token's
slot list: a prefix sum over the tile's row gives each hit its place, and one vector atomic add per
tile reserves the places (per-token counters); the other compactions give places by one atomic per
hit, or take each row's hits one row max at a time (encode_sparse_triton's `compact`). When a token
has more hits than slots, the counters still hold the true L0, so those tokens alone are encoded
again with exactly enough slots. Each token's slots are then sorted by feature, so the codes (and
everything decoded from them) do not depend on the order in which tiles finished; L1 and L0 are
summed from them. The decode is `sparse_codes.sparse_decode`, which gathers only the active decoder
rows.

TopK couples a token's features, so its encode is row-stationary: one program owns BLOCK_M tokens,
walks all F features in tiles of R >= k and keeps each token's R best (value, feature) pairs in
registers. Each pair is one int64 key (the float's order-preserving bits above the complement of
the feature index), so a single sort merges values and indices, and among equal values the
smaller feature wins. A tile whose best key beats no token's current R-th is skipped. The other
TopK route (encode_topk_filtered) reuses the ReLU encode kernel behind a per-token cut taken from a
sample of features; TOPK_METHOD picks one.

fp32 inputs run the encode as tf32x3 on the GPU (three tf32 tensor-core products, error about
fp32's) and IEEE fp32 in the interpreter; bf16 inputs use bf16 products. Accumulation is fp32.
precision="screen" is the other fp32 route, the default on a GPU from SCREEN_MIN_FEATURES
features up: a bf16 encode emits every feature that the bf16 products' proven error bound
(tiles.bf16_margin) cannot rule out, and sparse_rowdot recomputes those pre-activations in fp32,
which decide activity and give the values. Only a pre-activation within the arithmetic's error
(fp32's, for the screen) of 0 or of the threshold can change its activity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import triton_installed, triton_interpreting, triton_runs_on
from .sparse_codes import sparse_decode, sparse_rowdot
from .tiles import bf16_margin, dot_precision


class ForwardStats(NamedTuple):
    """Per token, fp32 [n]: sq_err = |x - x_hat|^2 (summed over d_in), l1 = sum f, l0 = #(f > 0).
    Codes: indices int32 [n, c] (ascending; -1 marks an empty slot), values fp32 [n, c]."""

    sq_err: torch.Tensor
    l1: torch.Tensor
    l0: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor


def _codes_from_dense(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features [n, F] -> (indices int32 [n, c] ascending with -1 padding, values [n, c])."""
    active = f > 0
    c = int(active.sum(1).max()) if f.numel() else 0
    # Sort active features first, each row in ascending feature order.
    key = torch.where(active, torch.arange(f.shape[1], device=f.device), f.shape[1])
    order = torch.sort(key, dim=1).values[:, :c]
    ok = order < f.shape[1]
    safe = order.clamp_max(max(f.shape[1] - 1, 0))
    values = torch.where(ok, f.gather(1, safe), torch.zeros((), dtype=f.dtype, device=f.device))
    return torch.where(ok, order, -1).to(torch.int32), values.float()


def sae_forward_reference(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
    apply_b_dec_to_input: bool = True,
    k: int | None = None,
) -> ForwardStats:
    """Plain torch: dense pre-activations and features, then the statistics and codes."""
    xin = x.to(W_enc.dtype)
    pre = (xin - b_dec if apply_b_dec_to_input else xin) @ W_enc + b_enc
    if k is not None:
        top = pre.topk(min(k, pre.shape[1]), dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    else:
        f = torch.relu(pre) if threshold is None else torch.relu(pre) * (pre > threshold)
    x_hat = f @ W_dec + b_dec
    sq_err = (x_hat.float() - x.float()).pow(2).sum(1)
    idx, val = _codes_from_dense(f)
    return ForwardStats(sq_err, f.float().sum(1), (f > 0).float().sum(1), idx, val)


if triton_installed():
    import triton
    import triton.language as tl

    from .tiles import tile_dot_t

    @triton.jit
    def _encode_kernel(
        X, WT, B_ENC, TH, RC, IDX, VAL, COUNT, L1P, L0P, XN, WN,
        n, F, D, capacity, margin,
        stride_x, stride_w,
        HAS_TH: tl.constexpr,
        ROW_CUT: tl.constexpr,
        SCREEN: tl.constexpr,
        STATS: tl.constexpr,
        EMIT_CODES: tl.constexpr,
        COMPACT: tl.constexpr,
        PRECISION: tl.constexpr,
        W_KMAJOR: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):  # fmt: skip
        # Grouped tile order: GROUP_M token blocks sweep the features together, so their x rows
        # stay in L2 while W_enc^T streams past (a column-major walk re-read all of x per feature
        # block: 4x the time at d_sae = 98,304).
        pid = tl.program_id(0)
        n_m = tl.cdiv(n, BLOCK_M)
        n_n = tl.cdiv(F, BLOCK_N)
        group = pid // (GROUP_M * n_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
        pid_n = (pid % (GROUP_M * n_n)) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rm < n
        col_ok = rn < F
        # WT: W_enc^T rows ([F, D], both operands K-major), or W_enc itself ([D, F]) when not
        # W_KMAJOR (see tiles.tile_dot_t).
        acc = tile_dot_t(
            X, WT, rm, rn, n, F, D, stride_x, stride_w, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, W_KMAJOR
        )
        b = tl.load(B_ENC + rn, mask=col_ok, other=0.0).to(tl.float32)
        pre = acc + b[None, :]
        if SCREEN:
            # Every feature whose exact pre-activation could pass: within the bf16 products'
            # bound (margin * (|x| |w_j| + |b_j|)) of the cut. Values are the caller's to redo.
            cut = 0.0
            if HAS_TH:
                cut = tl.maximum(tl.load(TH + rn, mask=col_ok, other=0.0).to(tl.float32), 0.0)[None, :]
            xn = tl.load(XN + rm, mask=row_ok, other=0.0)
            wn = tl.load(WN + rn, mask=col_ok, other=0.0)
            slack = margin * (xn[:, None] * wn[None, :] + tl.abs(b)[None, :])
            active = (pre > cut - slack) & row_ok[:, None] & col_ok[None, :]
            f = tl.where(active, pre, 0.0)
        else:
            f = tl.maximum(pre, 0.0)
            if HAS_TH:
                th = tl.load(TH + rn, mask=col_ok, other=0.0).to(tl.float32)
                f = tl.where(pre > th[None, :], f, 0.0)
            if ROW_CUT:  # a per-token cut: the TopK filter's candidates (encode_topk_filtered)
                rc = tl.load(RC + rm, mask=row_ok, other=0.0)
                f = tl.where(pre > rc[:, None], f, 0.0)
            active = (f > 0.0) & row_ok[:, None] & col_ok[None, :]
            f = tl.where(active, f, 0.0)
        hits = active.to(tl.int32)
        row_hits = tl.sum(hits, axis=1)
        if STATS:  # not for a screen, whose L1 and L0 come from the recomputed values
            out = pid_n * n + rm
            tl.store(L1P + out, tl.sum(f, axis=1), mask=row_ok)
            tl.store(L0P + out, row_hits.to(tl.float32), mask=row_ok)
        most = tl.max(row_hits, axis=0)  # hits of the tile's busiest row
        if EMIT_CODES and (COMPACT == "cumsum" or COMPACT == "peel") and most > 0:
            # One reservation per row with hits: at 0.05% density a 128 x 64 tile has about 4
            # hits, so most rows would add 0 (a rows-without-hits base is never used).
            # Relaxed: the slots need only atomicity (nothing reads them before the kernel ends),
            # and the default acq_rel ordering fences every atomic.
            base = tl.atomic_add(COUNT + rm, row_hits, mask=row_ok & (row_hits > 0), sem="relaxed")
            if COMPACT == "cumsum":  # a prefix sum over the row places each hit
                pos = base[:, None] + tl.cumsum(hits, axis=1) - 1
                ok = active & (pos < capacity)
                where = rm.to(tl.int64)[:, None] * capacity + pos
                tl.store(IDX + where, tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N]), mask=ok)
                tl.store(VAL + where, f, mask=ok)
            else:
                # "peel": per-row work only, as many rounds as the busiest row has hits, each
                # taking every row's largest remaining hit by one row max. The other two
                # compactions spend an atomic or a scan step, and a predicated store, on each of
                # the tile's BLOCK_M x BLOCK_N elements, almost all of them misses, and compiled
                # for sm_90 they run out of registers (bench/README.md, "Compiled without a GPU").
                left = tl.where(active, f, float("-inf"))  # a screen's candidates may be <= 0
                cols = tl.arange(0, BLOCK_N)
                for i in range(most):
                    v, j = tl.max(left, axis=1, return_indices=True)
                    ok = (i < row_hits) & (base + i < capacity)
                    where = rm.to(tl.int64) * capacity + base + i
                    tl.store(IDX + where, pid_n * BLOCK_N + j, mask=ok)
                    tl.store(VAL + where, v, mask=ok)
                    left = tl.where(cols[None, :] == j[:, None], float("-inf"), left)
        if EMIT_CODES and COMPACT == "atomic":
            # One atomic per hit (predicated off elsewhere): no cross-thread prefix sum.
            rows = tl.broadcast_to(rm[:, None], [BLOCK_M, BLOCK_N])
            pos = tl.atomic_add(COUNT + rows, hits, mask=active, sem="relaxed")
            ok = active & (pos < capacity)
            where = rows.to(tl.int64) * capacity + pos
            tl.store(IDX + where, tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N]), mask=ok)
            tl.store(VAL + where, f, mask=ok)

    @triton.jit
    def _pack(pre, feature):
        # Order-preserving int32 image of the fp32 bits (negative floats have their magnitude
        # bits flipped), above the complement of the feature index: sorting keys descending sorts
        # by value descending, then by feature ascending.
        bits = pre.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        return (ordered.to(tl.int64) << 32) | (4294967295 - feature.to(tl.int64))

    @triton.jit
    def _unpack(key):
        ordered = (key >> 32).to(tl.int32)
        bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
        feature = 4294967295 - (key & 4294967295)
        return bits.to(tl.float32, bitcast=True), feature.to(tl.int32)

    @triton.jit
    def _top_half(keys, BLOCK_M: tl.constexpr, R: tl.constexpr, MERGE: tl.constexpr):
        """The R largest of [BLOCK_M, 2R] keys per row, sorted descending."""
        if MERGE == "topk":  # bitonic top-k: sorts runs of R, then keeps the larger of each pair
            return tl.topk(keys, R)
        else:  # Triton without tl.topk: sort all 2R, keep the first R
            s = tl.reshape(tl.sort(keys, dim=1, descending=True), [BLOCK_M, 2, R])
            first, _ = tl.split(tl.permute(s, (0, 2, 1)))
            return first

    @triton.jit
    def _encode_topk_kernel(
        X, WT, B_ENC, IDX, VAL, L1, L0,
        n, F, D, k, stride_x, stride_w,
        PRECISION: tl.constexpr,
        MERGE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        R: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rm < n
        cols = tl.arange(0, R)
        # Start from R pairs (-inf, feature F + j) that any real feature outranks.
        best = _pack(tl.full([BLOCK_M, R], float("-inf"), tl.float32), F + cols[None, :] + 0 * rm[:, None])
        for start in range(0, F, R):
            rn = start + cols
            col_ok = rn < F
            acc = tile_dot_t(X, WT, rm, rn, n, F, D, stride_x, stride_w, BLOCK_M, R, BLOCK_K, PRECISION, True)
            pre = acc + tl.load(B_ENC + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            pre = tl.where(col_ok[None, :], pre, float("-inf"))
            keys = _pack(pre, rn[None, :] + 0 * rm[:, None])
            # A tile that beats no token's current R-th best key would change nothing.
            beats = (tl.max(keys, axis=1) > tl.min(best, axis=1)) & row_ok
            if tl.max(beats.to(tl.int32), axis=0) > 0:
                best = _top_half(tl.reshape(tl.join(best, keys), [BLOCK_M, 2 * R]), BLOCK_M, R, MERGE)
        val, feature = _unpack(best)
        active = (cols[None, :] < k) & (val > 0.0) & row_ok[:, None]
        val = tl.where(active, val, 0.0)
        where = rm.to(tl.int64)[:, None] * k + cols[None, :]
        store = (cols[None, :] < k) & row_ok[:, None]
        tl.store(IDX + where, tl.where(active, feature, -1), mask=store)
        tl.store(VAL + where, val, mask=store)
        tl.store(L1 + rm, tl.sum(val, axis=1), mask=row_ok)
        tl.store(L0 + rm, tl.sum(active.to(tl.float32), axis=1), mask=row_ok)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, compaction) per input dtype on a GPU, from
# bench/encode_sweep_gpu.py on an H100 (bench/results/gpu_encode_sweep_h100.json).
_CONFIGS = {"fp32": (128, 64, 32, 4, 3, "cumsum"), "bf16": (64, 128, 64, 4, 3, "atomic")}
# Not every Triton compiles every compaction (bench/results/triton_compile_encode_*.json):
# Triton 3.9 fails on "atomic" for sm_80 and sm_90, Triton 3.6 on bf16 "cumsum" and "peel" for
# sm_100. A default encode that fails to compile takes the next of these that compiles.
COMPACTIONS = ("cumsum", "atomic", "peel")


def compaction_order(first: str) -> tuple[str, ...]:
    """The order a default encode tries the compactions in: its tuned one, then the others."""
    return (first, *(c for c in COMPACTIONS if c != first))


def _encode_config(x: torch.Tensor) -> tuple[dict, str]:
    if not x.is_cuda:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1), "cumsum"
    m, n, k, w, s, compact = _CONFIGS["bf16" if x.dtype == torch.bfloat16 else "fp32"]
    return dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=s), compact


# (device, input dtype, compaction, the other compile-time arguments) that Triton failed to compile
# here (a failed compile is not cached by Triton, and takes seconds), and those it compiled (whose
# launches need no compile-only call first).
_UNCOMPILABLE: set[tuple] = set()
_COMPILED: set[tuple] = set()


def _compile_encode(grid: tuple, args: tuple, consts: dict) -> None:
    """Compile _encode_kernel for these arguments without running it (nothing to do in the
    interpreter). Raises what Triton raises when it cannot."""
    if not triton_interpreting():
        _encode_kernel.warmup(*args, grid=grid, **consts)


def _launch_encode(grid: tuple, args: tuple, consts: dict, compacts: tuple[str, ...]) -> str:
    """Run _encode_kernel with the first of `compacts` that compiles on args[0]'s device; returns
    it. Compiles and compile failures are remembered; if none compiles, the failures are reported."""
    failed = []
    for compact in compacts:
        key = (args[0].device, args[0].dtype, compact, tuple(sorted(consts.items())))
        if key in _UNCOMPILABLE:
            failed.append(f"{compact}: failed earlier in this process")
            continue
        if key not in _COMPILED:
            try:
                _compile_encode(grid, args, dict(consts, COMPACT=compact))
            except Exception as err:  # compile only: nothing ran, the outputs are untouched
                _UNCOMPILABLE.add(key)
                failed.append(f"{compact}: {type(err).__name__}: {str(err).strip()[:200]}")
                continue
            _COMPILED.add(key)
        _encode_kernel[grid](*args, COMPACT=compact, **consts)
        return compact
    raise RuntimeError(
        f"encode_sparse_triton: Triton {triton.__version__} compiled none of the slot compactions "
        f"{compacts} for {args[0].dtype} inputs on {args[0].device} with {consts}: " + "; ".join(failed)
    )


# The tl.dot arithmetics a caller may name (tiles.dot_precision); "bf16-interpret" is the
# interpreter's stand-in for "bf16".
DOT_PRECISIONS = ("tf32x3", "tf32", "ieee", "bf16")


def _dot_arithmetic(precision: str | None, x: torch.Tensor, caller: str) -> str:
    """A caller's precision checked (None: default_precision(x)); "bf16" on CPU tensors becomes
    "bf16-interpret", as the interpreter computes bf16 tl.dot wrongly."""
    if precision is None:
        return default_precision(x)
    if precision not in (*DOT_PRECISIONS, "bf16-interpret"):
        raise ValueError(f"{caller}: precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    return "bf16-interpret" if precision == "bf16" and not x.is_cuda else precision


def default_precision(x: torch.Tensor) -> str:
    """tl.dot's arithmetic for x in the fused kernels (tf32x3 for fp32 on a GPU)."""
    return dot_precision("bf16" if x.dtype == torch.bfloat16 else "fp32", x.is_cuda)


# How a bf16 encode reads W_enc: "k-major", from a W_enc^T copy made on each call (the layout the
# launch configurations were tuned with), or "n-major", W_enc as it is. The copy took 0.14 / 0.57 ms
# of the bf16 forward's 6.8 / 24.9 ms at d_sae 24,576 / 98,304 on an H100
# (bench/results/gpu_encode_profile_h100.json). Compiled for sm_90, the n-major loop has the
# k-major one's instruction mix (tiles.tile_dot_t); it has not been timed, so it is not the default.
BF16_W_LAYOUT = "k-major"


# fp32 encodes at least this wide run as the bf16 screen by default. On an H100 (n = 32,768,
# d_in = 768, L0 ~50) the screen took 1.05x tf32x3's time at d_sae 24,576 and 0.57x at 98,304
# (bench/results/gpu_kernels_h100.json), 0.74x at 49,152 and 0.65x at 65,536
# (gpu_encode_crossover_h100.json): its bf16 encode grows with the width, its fp32 recomputation
# only with each token's candidates. Between 24,576 and 49,152 is unmeasured, so the switch sits
# at the first width measured faster.
SCREEN_MIN_FEATURES = 49_152


def default_encode_precision(x: torch.Tensor, n_features: int, emit_codes: bool = True) -> str:
    """encode_sparse_triton's default: default_precision(x), except fp32 encodes on a GPU at
    least SCREEN_MIN_FEATURES wide that emit codes (the screen decides from them), which run the
    screen (fp32's answer, see encode_sparse_triton)."""
    precision = default_precision(x)
    wide = n_features >= SCREEN_MIN_FEATURES
    return "screen" if precision == "tf32x3" and wide and emit_codes else precision


def encode_sparse_triton(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor | None = None,
    capacity: int | None = None,
    config: dict | None = None,
    precision: str | None = None,
    emit_codes: bool = True,
    compact: str | None = None,
    w_layout: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused encode on x already shifted by b_dec: (indices int32 [n, c] ascending with -1
    padding, values fp32 [n, c], l1 [n], l0 [n]). Tokens with more active features than
    `capacity` slots (default 128; 256 for the screen) are encoded again, alone, with exactly
    enough. config / precision / compact override the tuned launch parameters, the arithmetic
    and the slot compaction ("cumsum": a prefix sum per tile row; "atomic": one atomic per hit;
    "peel": one row max per round, as many rounds as the tile's busiest row has hits). A named
    compaction that Triton cannot compile raises; the default one falls back along COMPACTIONS.
    emit_codes=False computes only L1 and L0 (for measuring the compaction's cost). w_layout:
    how the kernel reads W_enc, "k-major" (from a W_enc^T copy) or "n-major" (W_enc as it is, no
    copy; meant for bf16, as tf32 products want K-major); default: "k-major", or BF16_W_LAYOUT
    for bf16.

    precision: "tf32x3", "tf32", "ieee", "bf16" (tl.dot's arithmetic), or "screen": fp32 inputs
    run as a bf16 encode that emits every feature within the bf16 error bound of active
    (tiles.bf16_margin, times |x| |w_j| + |b_j|), whose pre-activations are then recomputed in
    fp32 (sparse_rowdot) to decide and give the values: fp32's answer at about bf16's cost.
    Default: default_encode_precision(x, F, emit_codes)."""
    precision = precision or default_encode_precision(x, W_enc.shape[1], emit_codes)
    if precision == "screen":
        if not emit_codes:
            raise ValueError("encode_sparse_triton: the screen needs the codes (emit_codes=True)")
        return _encode_screened(x, W_enc, b_enc, threshold, capacity, config, compact)
    precision = _dot_arithmetic(precision, x, "encode_sparse_triton")
    w_layout = w_layout or (BF16_W_LAYOUT if x.dtype == torch.bfloat16 else "k-major")
    if w_layout not in ("k-major", "n-major"):
        raise ValueError(f"encode_sparse_triton: w_layout must be 'k-major' or 'n-major', got {w_layout!r}")
    kmajor = w_layout == "k-major"
    # With codes, L1 and L0 are read off them rather than written per feature block by the kernel:
    # on an H100 the bf16 kernel without those partials took 5.22 ms against 5.61 (d_sae 24,576)
    # and 20.3 against 21.5 (98,304) (bench/results/gpu_encode_profile_h100.json, "codes_stats").
    idx, val, l1p, l0p, need = _encode_slots(
        x, W_enc.t().contiguous() if kmajor else W_enc.contiguous(), b_enc, threshold, capacity, config,
        precision, compact, emit_codes, stats=not emit_codes, w_kmajor=kmajor,
    )  # fmt: skip
    idx, val = _ascending(idx, val, need, W_enc.shape[1])
    if emit_codes:
        return idx, val, val.sum(1), (idx >= 0).sum(1).float()
    return idx, val, l1p.sum(0), l0p.sum(0)


def _encode_slots(
    x, WT, b_enc, threshold, capacity, config, precision, compact, emit_codes,
    screen=None, stats=True, row_cut=None, w_kmajor=True,
):  # fmt: skip
    """Launch _encode_kernel: (idx, val [n, c] in arrival order, l1 and l0 partials [F blocks, n]
    (1 x 1 unwritten unless stats, and never for a screen), c = the largest slot count).
    WT is W_enc^T [F, D], or W_enc [D, F] when not w_kmajor (read N-major, no copy).
    row_cut [n] (fp32): a token's features count only above its cut as well. Tokens
    with more hits than slots (the counters still hold their true count) are encoded again, alone,
    with exactly enough slots. Re-running the whole batch instead doubles the time for a few wide
    tokens: in the GPU bench's d_sae 98,304 batch about 10 of 32,768 tokens pass 128 hits (L0
    mean 50; bench/README.md)."""
    n, D = x.shape
    F = WT.shape[0] if w_kmajor else WT.shape[1]
    x = x.contiguous()
    default_cfg, default_compact = _encode_config(x)
    compact_given = compact is not None
    cfg, compact = config or default_cfg, compact or default_compact
    if compact not in COMPACTIONS:
        raise ValueError(f"encode_sparse_triton: compact must be one of {COMPACTIONS}, got {compact!r}")
    n_fblocks = triton.cdiv(F, cfg["BLOCK_N"])
    cap = max(1, min(F, capacity or (128 if screen is None else 256)))
    th = threshold.contiguous() if threshold is not None else b_enc
    xn, wn, margin = screen if screen is not None else (b_enc, b_enc, 0.0)
    rc = row_cut.float().contiguous() if row_cut is not None else b_enc
    stats = stats and screen is None
    idx = torch.full((n, cap), -1, dtype=torch.int32, device=x.device)
    val = torch.zeros(n, cap, dtype=torch.float32, device=x.device)
    count = torch.zeros(n, dtype=torch.int32, device=x.device)
    l1p = torch.empty((n_fblocks, n) if stats else (1, 1), dtype=torch.float32, device=x.device)
    l0p = torch.empty_like(l1p)
    if n and F:
        args = (
            x, WT, b_enc.contiguous(), th, rc, idx, val, count, l1p, l0p, xn, wn,
            n, F, D, cap, margin, x.stride(0), WT.stride(0),
        )  # fmt: skip
        consts = dict(
            HAS_TH=threshold is not None, ROW_CUT=row_cut is not None, SCREEN=screen is not None, STATS=stats,
            EMIT_CODES=emit_codes, PRECISION=precision, W_KMAJOR=w_kmajor, GROUP_M=8, **cfg,
        )  # fmt: skip
        # An explicit compaction is run as asked; the default falls back if Triton cannot compile it.
        order = (compact,) if compact_given else compaction_order(compact)
        _launch_encode((triton.cdiv(n, cfg["BLOCK_M"]) * n_fblocks,), args, consts, order)
    need = int(count.max()) if n and emit_codes else 0
    if need <= cap:
        return idx, val, l1p, l0p, need
    rows = (count > cap).nonzero().squeeze(1)
    sub_screen = None if screen is None else (xn[rows], wn, margin)
    sub_cut = None if row_cut is None else rc[rows]
    sub_idx, sub_val, _, _, sub_need = _encode_slots(
        x[rows], WT, b_enc, threshold, need, cfg, precision, compact if compact_given else None,
        emit_codes=True, screen=sub_screen, stats=False, row_cut=sub_cut, w_kmajor=w_kmajor,
    )  # fmt: skip
    idx, val = _widen(idx, val, sub_idx.shape[1])
    idx[rows], val[rows] = sub_idx, sub_val
    return idx, val, l1p, l0p, max(sub_need, int(torch.where(count > cap, 0, count).max()))


def _widen(idx: torch.Tensor, val: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots [n, c] -> [n, width] (width >= c), the new ones empty."""
    pad = (0, width - idx.shape[1])
    return torch.nn.functional.pad(idx, pad, value=-1), torch.nn.functional.pad(val, pad)


def _encode_screened(x, W_enc, b_enc, threshold, capacity, config, compact):
    """encode_sparse_triton's "screen" (see its doc)."""
    F = W_enc.shape[1]
    x, b_enc = x.float().contiguous(), b_enc.float()
    WT = W_enc.t().float().contiguous()
    screen = (
        torch.linalg.vector_norm(x, dim=1),
        torch.linalg.vector_norm(WT, dim=1),
        bf16_margin(x.shape[1]),
    )
    idx, _, _, _, need = _encode_slots(
        x.bfloat16(), WT.bfloat16(), b_enc, threshold, capacity, config,
        dot_precision("bf16", x.is_cuda), compact, True, screen,
    )  # fmt: skip
    idx = idx[:, :need]
    safe = idx.clamp_min(0).long()
    pre = sparse_rowdot(idx, x, WT) + b_enc[safe]
    on = (idx >= 0) & (pre > 0)
    if threshold is not None:
        on &= pre > threshold.float()[safe]
    val = torch.where(on, pre, 0.0)
    l0 = on.sum(1)
    idx, val = _ascending(torch.where(on, idx, -1), val, need, F)  # the dropped ones move last
    c = int(l0.max()) if len(l0) else 0
    return idx[:, :c], val[:, :c], val.sum(1), l0.float()


def _ascending(idx: torch.Tensor, val: torch.Tensor, c: int, F: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's first c slots (all its active ones) sorted by feature, -1 padding last."""
    key = torch.where(idx[:, :c] >= 0, idx[:, :c], F)
    key, order = torch.sort(key, dim=1)
    return torch.where(key < F, key, -1).to(torch.int32), val[:, :c].gather(1, order)


def encode_topk_triton(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    config: dict | None = None,
    precision: str | None = None,
    merge: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused TopK encode on x already shifted by b_dec (see module doc): the same
    (indices, values, l1, l0) as encode_sparse_triton, keeping ReLU of each token's k largest
    pre-activations (ties: the smaller feature). config overrides BLOCK_M, R (the tile width and
    candidates kept, a power of two >= k and >= 16), BLOCK_K, num_warps, num_stages; merge picks
    how a tile joins the kept candidates: "topk" (tl.topk, the default where Triton has it) or
    "sort" (a full sort of both)."""
    n, D = x.shape
    F = W_enc.shape[1]
    if k < 1:
        raise ValueError(f"encode_topk_triton: k must be >= 1, got {k}")
    k = min(k, F)
    x, WT = x.contiguous(), W_enc.t().contiguous()
    precision = _dot_arithmetic(precision, x, "encode_topk_triton")
    if merge not in (None, "topk", "sort"):
        raise ValueError(f"encode_topk_triton: merge must be 'topk' or 'sort', got {merge!r}")
    r = max(16, triton.next_power_of_2(k))
    if config is None and x.is_cuda:  # not tuned on a GPU yet: bounded registers per program
        config = dict(BLOCK_M=max(16, min(64, 4096 // r)), R=r, BLOCK_K=32, num_warps=4, num_stages=2)
    cfg = config or dict(BLOCK_M=16, R=r, BLOCK_K=16, num_warps=1, num_stages=1)
    merge = merge or ("topk" if hasattr(tl, "topk") else "sort")
    new = torch.empty if n and F else torch.zeros  # the kernel writes every output
    idx = new((n, k), dtype=torch.int32, device=x.device)
    val = new((n, k), dtype=torch.float32, device=x.device)
    l1 = new((n,), dtype=torch.float32, device=x.device)
    l0 = new((n,), dtype=torch.float32, device=x.device)
    if n and F:
        grid = (triton.cdiv(n, cfg["BLOCK_M"]),)
        _encode_topk_kernel[grid](
            x, WT, b_enc.contiguous(), idx, val, l1, l0,
            n, F, D, k, x.stride(0), WT.stride(0),
            PRECISION=precision, MERGE=merge, **cfg,
        )  # fmt: skip
    c = int(l0.max()) if n else 0
    idx, val = _ascending(idx, val, c, F)
    return idx, val, l1, l0


# Which TopK encode sae_forward_triton runs: "filter" (encode_topk_filtered) or "merge"
# (encode_topk_triton). On an H100 at k = 32, n = 32,768, d_in = 768 the filter's whole forward took
# 27.0 ms against the merge's 58.5 ms at d_sae 24,576, and 103.8 ms against 223.7 ms at 98,304,
# with identical codes (bench/results/gpu_kernels_h100.json, "forward_topk").
TOPK_METHOD = "filter"


def encode_topk_filtered(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    candidates: int = 256,
    precision: str | None = None,
    capacity: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TopK encode through the ReLU encode's kernel, on x already shifted by b_dec: the same
    (indices, values, l1, l0) as encode_topk_triton. Three steps:
    1. A cut per token: its k-th largest pre-activation over a strided sample of about
       k F / candidates features (a torch matmul), less a slack for how far that matmul (TF32
       included) and the kernel can differ: 2 (2^-9 + d 2^-22) (|x| max_j |w_j| + max_j |b_j|).
    2. The ReLU encode kernel emits the token's features above max(cut, 0): about `candidates`
       of them (slots: `capacity`, default 2 candidates; more are encoded again).
    3. The k largest of those by (value, then the smaller feature), as the TopK kernel keeps.
    The result does not rest on the slack: a token with k candidates has its top k among them,
    and a token with fewer whose cut was above 0 has all its positive features encoded again.
    Step 1 reads k F / candidates of W_enc's columns: a GEMM 1/8 the size of step 2's at k = 32
    with the default."""
    n, D = x.shape
    F = W_enc.shape[1]
    if k < 1:
        raise ValueError(f"encode_topk_filtered: k must be >= 1, got {k}")
    if precision == "screen":
        raise ValueError("encode_topk_filtered: precision must be a tl.dot one, not 'screen'")
    k = min(k, F)
    x = x.contiguous()
    if n == 0 or F == 0:
        return encode_topk_triton(x, W_enc, b_enc, k)
    sample = min(F, max(k, -(-k * F // candidates)))  # about k F / candidates, at least k
    Ws, bs = W_enc[:, :: F // sample].float(), b_enc[:: F // sample].float()
    chunk = max(1, 2**26 // Ws.shape[1])  # [chunk, sample] fp32 temporaries of 256 MB at most
    kth = torch.cat([torch.addmm(bs, xc.float(), Ws).topk(k, dim=1).values[:, -1] for xc in x.split(chunk)])
    wmax = torch.linalg.vector_norm(W_enc.float(), dim=0).max()
    xnorm = torch.linalg.vector_norm(x.float(), dim=1)
    cut = kth - 2 * (2**-9 + D * 2**-22) * (xnorm * wmax + b_enc.float().abs().max())

    WT, precision = W_enc.t().contiguous(), _dot_arithmetic(precision, x, "encode_topk_filtered")

    def above(rows: torch.Tensor | None, cut: torch.Tensor | None):
        xr = x if rows is None else x[rows]
        idx, val, _, _, need = _encode_slots(
            xr, WT, b_enc, None, capacity or 2 * candidates, None, precision, None,
            emit_codes=True, stats=False, row_cut=cut,
        )  # fmt: skip
        return idx[:, :need], val[:, :need]

    idx, val = above(None, cut)
    short = ((idx >= 0).sum(1) < k) & (cut > 0)
    if short.any():  # the cut was above the token's k-th: take all its positive features
        rows = short.nonzero().squeeze(1)
        sub_idx, sub_val = above(rows, None)
        width = max(idx.shape[1], sub_idx.shape[1])
        idx, val = _widen(idx, val, width)
        idx[rows], val[rows] = _widen(sub_idx, sub_val, width)
    # Every candidate's value is > 0, so its fp32 bits order like it; the complement of the
    # feature breaks ties toward the smaller one. Empty slots (-1) rank last.
    key = torch.where(idx >= 0, (val.view(torch.int32).long() << 32) | (2**32 - 1 - idx.long()), -1)
    top = key.topk(min(k, idx.shape[1]), dim=1).indices
    idx, val = idx.gather(1, top), val.gather(1, top)
    l0 = (idx >= 0).sum(1)
    idx, val = _ascending(idx, val, int(l0.max()), F)
    return idx, val, val.sum(1), l0.float()


def sae_forward_triton(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
    apply_b_dec_to_input: bool = True,
    capacity: int | None = None,
    k: int | None = None,
) -> ForwardStats:
    """Fused encode + sparse decode (see module doc)."""
    xin = x.to(W_enc.dtype)
    xin = xin - b_dec if apply_b_dec_to_input else xin
    if k is not None:
        topk = encode_topk_filtered if TOPK_METHOD == "filter" else encode_topk_triton
        idx, val, l1, l0 = topk(xin, W_enc, b_enc, k)
    else:
        idx, val, l1, l0 = encode_sparse_triton(xin, W_enc, b_enc, threshold, capacity)
    _, sq_err = sparse_decode(idx, val, W_dec, b_dec, x)
    return ForwardStats(sq_err, l1, l0, idx, val)


def sae_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
    apply_b_dec_to_input: bool = True,
    k: int | None = None,
) -> ForwardStats:
    """Dispatch: the fused Triton path where Triton runs on x's device, else the reference."""
    args = (x, W_enc, b_enc, W_dec, b_dec, threshold, apply_b_dec_to_input)
    if triton_runs_on(x.device):
        return sae_forward_triton(*args, k=k)
    return sae_forward_reference(*args, k=k)
