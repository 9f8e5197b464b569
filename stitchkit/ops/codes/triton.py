"""Triton kernels of the sparse-code operations and their launchers (see stitchkit.ops.codes):
- decode: one program per (token block, d block) gathers the k decoder rows of its tokens.
- gradient, "atomics": one program per (token block, d block) adds val * g into the rows of dW
  with atomic adds; fast, but the order of the additions (so the last bits) varies run to run.
- gradient, "sorted": the (feature, token, value) triples sorted by feature on the host, then one
  program per (feature, d block) sums its segment in a fixed order: deterministic, no atomics.
- rowdot: one program per token block, one slot at a time.
"""

from __future__ import annotations

import torch

from ..dispatch import triton_installed

if triton_installed():
    import triton
    import triton.language as tl

    @triton.jit
    def _slot_index(IDX, rn, row_ok, stride_idx, s):
        """Feature index of slot s of rows rn (int64; -1 for empty slots and rows past the end)."""
        return tl.load(IDX + rn.to(tl.int64) * stride_idx + s, mask=row_ok, other=-1).to(tl.int64)

    @triton.jit
    def _slot(IDX, VAL, rn, row_ok, stride_idx, s):
        """(index, fp32 value) of slot s of rows rn."""
        v = tl.load(VAL + rn.to(tl.int64) * stride_idx + s, mask=row_ok, other=0.0).to(tl.float32)
        return _slot_index(IDX, rn, row_ok, stride_idx, s), v

    @triton.jit
    def _decode_kernel(
        IDX, VAL, W, B, X, OUT, ERR,
        n, k, d,
        stride_idx, stride_w, stride_x, stride_out,
        HAS_X: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_d = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        row_ok = rn < n
        col_ok = rd < d
        acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for s in range(0, k):
            j, v = _slot(IDX, VAL, rn, row_ok, stride_idx, s)
            ok = j >= 0
            w = tl.load(
                W + tl.maximum(j, 0)[:, None] * stride_w + rd[None, :],
                mask=ok[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.where(ok, v, 0.0)[:, None] * w
        acc += tl.load(B + rd, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        both = row_ok[:, None] & col_ok[None, :]
        tl.store(OUT + rn.to(tl.int64)[:, None] * stride_out + rd[None, :], acc, mask=both)
        if HAS_X:
            x = tl.load(X + rn.to(tl.int64)[:, None] * stride_x + rd[None, :], mask=both, other=0.0)
            diff = tl.where(both, acc - x.to(tl.float32), 0.0)
            # One partial sum per d block; the host adds the blocks (deterministic).
            tl.store(ERR + pid_d * n + rn, tl.sum(diff * diff, axis=1), mask=row_ok)

    @triton.jit
    def _rowdot_kernel(
        IDX, G, W, OUT,
        n, k, d,
        stride_idx, stride_g, stride_w,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rn < n
        for s in range(0, k):
            j = _slot_index(IDX, rn, row_ok, stride_idx, s)
            ok = j >= 0
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for d0 in range(0, d, BLOCK_D):
                rd = d0 + tl.arange(0, BLOCK_D)
                col_ok = rd < d
                g = tl.load(
                    G + rn.to(tl.int64)[:, None] * stride_g + rd[None, :],
                    mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0,
                ).to(tl.float32)
                w = tl.load(
                    W + tl.maximum(j, 0)[:, None] * stride_w + rd[None, :],
                    mask=ok[:, None] & col_ok[None, :],
                    other=0.0,
                ).to(tl.float32)
                acc += tl.sum(g * w, axis=1)
            tl.store(OUT + rn.to(tl.int64) * k + s, acc, mask=row_ok)

    @triton.jit
    def _grad_atomic_kernel(
        IDX, VAL, G, DW,
        n, k, d,
        stride_idx, stride_g,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_d = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        row_ok = rn < n
        col_ok = rd < d
        g = tl.load(
            G + rn.to(tl.int64)[:, None] * stride_g + rd[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        for s in range(0, k):
            j, v = _slot(IDX, VAL, rn, row_ok, stride_idx, s)
            ok = (j >= 0) & (v != 0.0)
            tl.atomic_add(
                DW + tl.maximum(j, 0)[:, None] * d + rd[None, :],
                v[:, None] * g,
                mask=ok[:, None] & col_ok[None, :],
                sem="relaxed",  # a sum: no ordering needed
            )

    @triton.jit
    def _grad_sorted_kernel(
        SEG_FEATURE, SEG_START, TOK, VAL, G, DW,
        d, stride_g,
        BLOCK_E: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        seg = tl.program_id(0)
        pid_d = tl.program_id(1)
        rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = rd < d
        start = tl.load(SEG_START + seg)
        end = tl.load(SEG_START + seg + 1)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for e0 in range(start, end, BLOCK_E):
            re = e0 + tl.arange(0, BLOCK_E)
            e_ok = re < end
            t = tl.load(TOK + re, mask=e_ok, other=0).to(tl.int64)
            v = tl.load(VAL + re, mask=e_ok, other=0.0).to(tl.float32)
            g = tl.load(
                G + t[:, None] * stride_g + rd[None, :], mask=e_ok[:, None] & col_ok[None, :], other=0.0
            ).to(tl.float32)
            acc += tl.sum(v[:, None] * g, axis=0)
        feature = tl.load(SEG_FEATURE + seg).to(tl.int64)
        tl.store(DW + feature * d + rd, acc, mask=col_ok)


def _row_blocks(on_gpu: bool) -> dict:
    """Launch parameters of the row-gathering kernels (decode, gradient, rowdot)."""
    return dict(BLOCK_N=32, BLOCK_D=128, num_warps=4) if on_gpu else dict(BLOCK_N=8, BLOCK_D=16, num_warps=1)


def sparse_decode_triton(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton sparse_decode (see module doc); `out` (fp32 [n, d], contiguous) receives x_hat."""
    idx, val, W_dec = idx.contiguous(), val.contiguous(), W_dec.contiguous()
    n, k = idx.shape
    d = W_dec.shape[1]
    if out is None:
        out = torch.empty(n, d, dtype=torch.float32, device=W_dec.device)
    cfg = _row_blocks(W_dec.is_cuda)
    d_blocks = triton.cdiv(d, cfg["BLOCK_D"])
    err = torch.empty(d_blocks, n, dtype=torch.float32, device=W_dec.device) if x is not None else out
    xx = x.contiguous() if x is not None else out
    if n and d:
        _decode_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), d_blocks)](
            idx, val, W_dec, b_dec.contiguous(), xx, out, err,
            n, k, d, max(k, 1), W_dec.stride(0), xx.stride(0), out.stride(0),
            HAS_X=x is not None, **cfg,
        )  # fmt: skip
    if x is None:
        return out, None
    return out, err.sum(0) if n and d else torch.zeros(n, dtype=torch.float32, device=out.device)


def sparse_decoder_grad_atomic(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    """Triton sparse_decoder_grad with atomic adds (see module doc; last bits vary run to run)."""
    idx, val, g = idx.contiguous(), val.contiguous(), g.contiguous()
    n, k = idx.shape
    d = g.shape[1]
    out = torch.zeros(d_sae, d, dtype=torch.float32, device=g.device)
    cfg = _row_blocks(g.is_cuda)
    if n and k and d:
        _grad_atomic_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(d, cfg["BLOCK_D"]))](
            idx, val, g, out, n, k, d, k, g.stride(0), **cfg
        )
    return out


def sparse_decoder_grad_sorted(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    """Triton sparse_decoder_grad as a segmented reduction over slots sorted by feature
    (see module doc; deterministic)."""
    n, k = idx.shape
    d = g.shape[1]
    g = g.contiguous()
    out = torch.zeros(d_sae, d, dtype=torch.float32, device=g.device)
    flat = idx.reshape(-1).long()
    keep = (flat >= 0) & (val.reshape(-1) != 0)
    slots = keep.nonzero().flatten()
    if len(slots) == 0 or d == 0:
        return out
    features = flat[slots]
    order = torch.argsort(features, stable=True)  # within a feature, token order: a fixed sum order
    slots, features = slots[order], features[order]
    tokens = (slots // k).to(torch.int32)
    values = val.reshape(-1)[slots].float()
    seg_feature, counts = torch.unique_consecutive(features, return_counts=True)
    seg_start = torch.zeros(len(counts) + 1, dtype=torch.int64, device=g.device)
    torch.cumsum(counts, 0, out=seg_start[1:])
    cfg = (
        dict(BLOCK_E=32, BLOCK_D=128, num_warps=4) if g.is_cuda else dict(BLOCK_E=4, BLOCK_D=16, num_warps=1)
    )
    _grad_sorted_kernel[(len(seg_feature), triton.cdiv(d, cfg["BLOCK_D"]))](
        seg_feature, seg_start, tokens, values, g, out, d, g.stride(0), **cfg
    )
    return out


def sparse_rowdot_triton(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Triton sparse_rowdot (see module doc)."""
    idx, g, W = idx.contiguous(), g.contiguous(), W.contiguous()
    n, k = idx.shape
    d = g.shape[1]
    out = torch.zeros(n, k, dtype=torch.float32, device=g.device)
    cfg = _row_blocks(g.is_cuda)
    if n and k:
        _rowdot_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
            idx, g, W, out, n, k, d, k, g.stride(0), W.stride(0), **cfg
        )
    return out


# Measured on an H100 at n=32,768, d=768, L0 50 (bench/results/gpu_kernels_h100.json), since the
# atomics are relaxed: sorted 2.0 / 2.9 ms, atomics 1.7 / 3.1 ms at d_sae 24,576 / 98,304 (with the
# default acq_rel ordering the atomics took 5.6 ms at 24,576), dense F^T g 22.9 / 90.4 ms. Sorted
# stays: it is deterministic, and the 0.3 ms it gives up at 24,576 it wins back at 98,304.
GRAD_METHOD = "sorted"
