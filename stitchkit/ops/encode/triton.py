"""Launchers of the fused encode kernels, their tuning knobs, and the fused forward.

    encode_sparse_triton(x, W_enc, b_enc, threshold=None, ...) -> (idx, val, l1, l0)
    encode_topk_triton / encode_topk_filtered(x, W_enc, b_enc, k, ...) -> the same, TopK
    sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec, threshold, apply_b_dec_to_input, k) -> ForwardStats

Each knob (launch configurations, compaction order, W_enc layout, the screen's width, the TopK
route) sits beside the launcher it tunes, with the benchmark JSON that set it. `CompileMemo`
remembers, per process, which compile-time variants Triton compiled and which it refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..codes import sparse_decode, sparse_rowdot
from ..dispatch import rows_per_chunk, settings, triton_installed, triton_interpreting
from ..tiles import bf16_margin, dot_precision
from .naive import ForwardStats

if triton_installed():
    import triton
    import triton.language as tl

    from .kernels import _encode_kernel, _encode_topk_kernel


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


@dataclass
class CompileMemo:
    """What Triton compiled and refused in this process, per (device, dtype, compaction, other
    compile-time arguments): a failed compile is not cached by Triton and takes seconds, and a
    variant known to compile needs no compile-only call before its launch. `compile(grid, args,
    consts)` compiles without running (Triton's warmup; nothing in the interpreter); `launched`
    lists the compactions launched, in order. Encodes share MEMO unless given their own."""

    compile: Callable[[tuple, tuple, dict], None] | None = None
    compiled: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    launched: list = field(default_factory=list)

    def compile_only(self, grid: tuple, args: tuple, consts: dict) -> None:
        if self.compile is not None:
            self.compile(grid, args, consts)
        elif not triton_interpreting():
            _encode_kernel.warmup(*args, grid=grid, **consts)

    def launch(self, grid: tuple, args: tuple, consts: dict, compacts: tuple[str, ...]) -> str:
        """Run _encode_kernel with the first of `compacts` that compiles on args[0]'s device;
        returns it. If none compiles, the failures are reported."""
        reasons = []
        for compact in compacts:
            key = (args[0].device, args[0].dtype, compact, tuple(sorted(consts.items())))
            if key in self.failed:
                reasons.append(f"{compact}: failed earlier in this process")
                continue
            if key not in self.compiled:
                try:
                    self.compile_only(grid, args, dict(consts, COMPACT=compact))
                except Exception as err:  # compile only: nothing ran, the outputs are untouched
                    self.failed.add(key)
                    reasons.append(f"{compact}: {type(err).__name__}: {str(err).strip()[:200]}")
                    continue
                self.compiled.add(key)
            _encode_kernel[grid](*args, COMPACT=compact, **consts)
            self.launched.append(compact)
            return compact
        raise RuntimeError(
            f"encode_sparse_triton: Triton {triton.__version__} compiled none of the slot compactions "
            f"{compacts} for {args[0].dtype} inputs on {args[0].device} with {consts}: " + "; ".join(reasons)
        )


MEMO = CompileMemo()


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


def default_encode_precision(
    dtype: torch.dtype, n_features: int, emit_codes: bool = True, *, on_gpu: bool = True
) -> str:
    """encode_sparse_triton's default arithmetic: tiles.dot_precision of the dtype, except fp32
    encodes on a GPU at least SCREEN_MIN_FEATURES wide that emit codes (the screen decides from
    them), which run the screen (fp32's answer, see encode_sparse_triton). Settings.fp32_encode
    (ops.dispatch) overrides it for fp32 inputs."""
    precision = dot_precision("bf16" if dtype == torch.bfloat16 else "fp32", on_gpu)
    forced = settings().fp32_encode
    if forced is not None and dtype != torch.bfloat16:
        return forced
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
    memo: CompileMemo | None = None,
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
    Default: default_encode_precision. memo: the CompileMemo to use (default MEMO)."""
    precision = precision or default_encode_precision(x.dtype, W_enc.shape[1], emit_codes, on_gpu=x.is_cuda)
    if precision == "screen":
        if not emit_codes:
            raise ValueError("encode_sparse_triton: the screen needs the codes (emit_codes=True)")
        return _encode_screened(x, W_enc, b_enc, threshold, capacity, config, compact, memo)
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
        precision, compact, emit_codes, stats=not emit_codes, w_kmajor=kmajor, memo=memo,
    )  # fmt: skip
    idx, val = _ascending(idx, val, need, W_enc.shape[1])
    if emit_codes:
        return idx, val, val.sum(1), (idx >= 0).sum(1).float()
    return idx, val, l1p.sum(0), l0p.sum(0)


def _encode_slots(
    x, WT, b_enc, threshold, capacity, config, precision, compact, emit_codes,
    screen=None, stats=True, row_cut=None, w_kmajor=True, memo=None,
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
        (memo or MEMO).launch((triton.cdiv(n, cfg["BLOCK_M"]) * n_fblocks,), args, consts, order)
    need = int(count.max()) if n and emit_codes else 0
    if need <= cap:
        return idx, val, l1p, l0p, need
    rows = (count > cap).nonzero().squeeze(1)
    sub_screen = None if screen is None else (xn[rows], wn, margin)
    sub_cut = None if row_cut is None else rc[rows]
    sub_idx, sub_val, _, _, sub_need = _encode_slots(
        x[rows], WT, b_enc, threshold, need, cfg, precision, compact if compact_given else None,
        emit_codes=True, screen=sub_screen, stats=False, row_cut=sub_cut, w_kmajor=w_kmajor, memo=memo,
    )  # fmt: skip
    idx, val = _widen(idx, val, sub_idx.shape[1])
    idx[rows], val[rows] = sub_idx, sub_val
    return idx, val, l1p, l0p, max(sub_need, int(torch.where(count > cap, 0, count).max()))


def _widen(idx: torch.Tensor, val: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots [n, c] -> [n, width] (width >= c), the new ones empty."""
    pad = (0, width - idx.shape[1])
    return torch.nn.functional.pad(idx, pad, value=-1), torch.nn.functional.pad(val, pad)


def _encode_screened(x, W_enc, b_enc, threshold, capacity, config, compact, memo=None):
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
        dot_precision("bf16", x.is_cuda), compact, True, screen, memo=memo,
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
    chunk = rows_per_chunk(4 * Ws.shape[1], x.device)  # [chunk, sample] fp32 temporaries
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
    topk_method: str | None = None,
) -> ForwardStats:
    """Fused encode + sparse decode (see stitchkit.ops.encode). topk_method: "filter" or "merge"
    (default: Settings.topk_method, else TOPK_METHOD)."""
    xin = x.to(W_enc.dtype)
    xin = xin - b_dec if apply_b_dec_to_input else xin
    if k is not None:
        method = topk_method or settings().topk_method or TOPK_METHOD
        if method not in ("filter", "merge"):
            raise ValueError(f"sae_forward_triton: topk_method must be 'filter' or 'merge', got {method!r}")
        topk = encode_topk_filtered if method == "filter" else encode_topk_triton
        idx, val, l1, l0 = topk(xin, W_enc, b_enc, k)
    else:
        idx, val, l1, l0 = encode_sparse_triton(xin, W_enc, b_enc, threshold, capacity)
    _, sq_err = sparse_decode(idx, val, W_dec, b_dec, x)
    return ForwardStats(sq_err, l1, l0, idx, val)
