"""Sparse codes: decoding and the decoder gradient without a dense [n, d_sae] matrix.

Codes are (indices [n, k] int32/int64, values [n, k]): token t uses features indices[t, s] with
weights values[t, s]; a slot whose index is < 0 is empty (its value is ignored).

    sparse_decode(idx, val, W_dec [F, d], b_dec [d], x=None)
        -> x_hat [n, d] = b_dec + sum_s val[t, s] W_dec[idx[t, s]]  (fp32 accumulation, fp32 out)
           and, when x [n, d] is given, the per-token squared error |x_hat - x|^2 [n] (fp32).
    sparse_decoder_grad(idx, val, g [n, d], d_sae)
        -> dW [d_sae, d] fp32, dW[j] = sum over slots with idx == j of val * g[t]: the gradient of
           sum_t g[t] . x_hat[t] with respect to W_dec, i.e. F^T g for the sparse code matrix F.
    coactivation(idx_a, val_a, idx_b, val_b, d_a, d_b)
        -> C [d_a, d_b] fp32, C[a, b] = sum_t f_a(t) f_b(t) over two code sets of the same tokens.
    sparse_rowdot(idx, g [n, d], W [F, d])
        -> [n, k] fp32, g[t] . W[idx[t, s]] (0 for empty slots): the gradient reaching each active
           code from the output, (g W^T) read only where the codes are.

Beside the torch references, two Triton kernels each:
- decode: one program per (token block, d block) gathers the k decoder rows of its tokens.
- gradient, "atomics": one program per (token block, d block) adds val * g into the rows of dW
  with atomic adds; fast, but the order of the additions (so the last bits) varies run to run.
- gradient, "sorted": the (feature, token, value) triples sorted by feature on the host, then one
  program per (feature, d block) sums its segment in a fixed order: deterministic, no atomics.
`sparse_decoder_grad` uses the one `GRAD_METHOD` names; see the comment there for the measurement.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import compiled
from .dispatch import memory_budget, triton_installed, triton_runs_on

# -- torch references -----------------------------------------------------------------------


def _token_chunk(k: int, d: int, device: torch.device) -> int:
    return max(1, memory_budget(device) // max(4 * k * d, 1))


def sparse_decode_reference(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference for sparse_decode (see module doc): gather, weight, sum, chunked by tokens."""
    n, k = idx.shape
    out = torch.empty(n, W_dec.shape[1], dtype=torch.float32, device=W_dec.device)
    step = _token_chunk(k, W_dec.shape[1], W_dec.device)
    for s in range(0, n, step):
        i, v = idx[s : s + step].long(), val[s : s + step].float()
        v = torch.where(i >= 0, v, torch.zeros_like(v))
        rows = W_dec[i.clamp_min(0)].float()  # [chunk, k, d]
        out[s : s + step] = (v[..., None] * rows).sum(1) + b_dec.float()
    err = None if x is None else (out - x.float()).pow(2).sum(1)
    return out, err


def sparse_decoder_grad_reference(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    """Torch reference for sparse_decoder_grad (see module doc), via index_add_ over chunks."""
    n, k = idx.shape
    d = g.shape[1]
    out = torch.zeros(d_sae, d, dtype=torch.float32, device=g.device)
    step = _token_chunk(k, d, g.device)
    for s in range(0, n, step):
        i, v = idx[s : s + step].long(), val[s : s + step].float()
        ok = i >= 0
        contrib = v[..., None] * g[s : s + step].float()[:, None, :]  # [chunk, k, d]
        out.index_add_(0, i[ok], contrib[ok])
    return out


def _dense_chunk(idx: torch.Tensor, val: torch.Tensor, width: int) -> torch.Tensor:
    i = idx.long()
    v = torch.where(i >= 0, val.float(), torch.zeros((), device=val.device))
    return torch.zeros(len(i), width, device=val.device).scatter_add_(1, i.clamp_min(0), v)


def sparse_decode_cpu(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sparse_decode through torch's embedding_bag (a weighted sum of gathered rows in one op):
    48x the reference on the 2-core CPU (bench/results/cpu_kernels_pytest.json)."""
    i = idx.long()
    v = torch.where(i >= 0, val.to(W_dec.dtype), torch.zeros((), dtype=W_dec.dtype, device=val.device))
    out = torch.nn.functional.embedding_bag(i.clamp_min(0), W_dec, per_sample_weights=v, mode="sum")
    out = out.float() + b_dec.float()
    return out, None if x is None else (out - x.float()).pow(2).sum(1)


# SAE.decode on the CPU takes decode_dense_cpu up to this fraction of nonzero features. Its speed-up
# over the dense f @ W_dec on the 2-core CPU (n = 4,096; bench/results/cpu_decode_dense_pytest.json):
# 3.4x / 2.6x / 1.8x / 1.3x / 0.94x at 0.2 / 1 / 3 / 6 / 10% nonzero with d_sae 6,144, d_in 384, and
# 6.2x / 2.3x / 1.6x / 0.98x / 0.62x at 24,576 x 768. Typical SAEs (L0 50-300) are well below 3%.
DENSE_DECODE_MAX_DENSITY = 0.03
DENSE_DECODE_DTYPES = (torch.float32, torch.float64)  # the ones measured


class Nonzeros(NamedTuple):
    """The nonzeros of dense features f [n, F], tokens in order and each one's features ascending:
    token rows, feature cols, values (f's dtype) [nnz]; starts [n], each token's first entry."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    starts: torch.Tensor


def nonzeros_cpu(f: torch.Tensor) -> Nonzeros | None:
    """f [..., F]'s nonzeros (leading dims flattened into tokens), or None where f is empty or more
    than DENSE_DECODE_MAX_DENSITY of it is nonzero (then dense products are faster)."""
    flat = f.reshape(-1, f.shape[-1])
    if flat.numel() == 0:
        return None
    if torch.count_nonzero(flat) > DENSE_DECODE_MAX_DENSITY * flat.numel():  # one pass, no index list
        return None
    nz = flat.nonzero()  # row-major: tokens in order, each one's features ascending
    rows, cols = nz.unbind(1)
    starts = torch.searchsorted(rows, torch.arange(flat.shape[0], device=f.device))
    return Nonzeros(rows, cols, flat[rows, cols], starts)


def decode_nonzeros(nz: Nonzeros, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """b_dec + f W_dec [n, d] from f's nonzeros: each token's rows of W_dec gathered and weighted by
    embedding_bag. Differentiable in W_dec and b_dec (and nz.values)."""
    weights = nz.values.to(W_dec.dtype)
    return (
        torch.nn.functional.embedding_bag(nz.cols, W_dec, nz.starts, mode="sum", per_sample_weights=weights)
        + b_dec
    )


def decode_dense_cpu(f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor | None:
    """b_dec + f W_dec for dense features f [..., F] through their nonzeros alone, or None where
    nonzeros_cpu declines f or W_dec's dtype is not in DENSE_DECODE_DTYPES. Not differentiable at
    f's zeros: not for an f that needs its gradient."""
    nz = nonzeros_cpu(f) if W_dec.dtype in DENSE_DECODE_DTYPES else None
    if nz is None:
        return None
    return decode_nonzeros(nz, W_dec, b_dec).reshape(*f.shape[:-1], W_dec.shape[1])


def sparse_decoder_grad_cpu(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    """sparse_decoder_grad as a sparse [d_sae, n] x dense [n, d] product (torch.sparse.mm on the
    coalesced COO code matrix): 10x the reference on the 2-core CPU."""
    n, k = idx.shape
    ok = idx >= 0
    rows = torch.arange(n, device=g.device)[:, None].expand(n, k)[ok]
    return sparse_t_matmul(rows, idx[ok].long(), val[ok].float(), (n, d_sae), g.float())


def sparse_t_matmul(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], m: torch.Tensor
) -> torch.Tensor:
    """A^T m [F, d] for A [n, F] given by its nonzeros (rows, cols, values; repeated entries add up)
    and m [n, d]: torch.sparse.mm on the coalesced COO matrix A^T."""
    a_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, shape[::-1], check_invariants=False)
    return torch.sparse.mm(a_t.coalesce(), m)


def coactivation_reference(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor, d_a: int, d_b: int
) -> torch.Tensor:
    """Torch reference for coactivation (see module doc): dense token chunks, then A^T B."""
    out = torch.zeros(d_a, d_b, dtype=torch.float32, device=val_a.device)
    step = max(1, memory_budget(val_a.device) // max(4 * (d_a + d_b), 1))
    for s in range(0, idx_a.shape[0], step):
        a = _dense_chunk(idx_a[s : s + step], val_a[s : s + step], d_a)
        b = _dense_chunk(idx_b[s : s + step], val_b[s : s + step], d_b)
        out += a.T @ b
    return out


def sparse_rowdot_reference(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Torch reference for sparse_rowdot (see module doc), chunked by tokens."""
    n, k = idx.shape
    out = torch.zeros(n, k, dtype=torch.float32, device=g.device)
    step = _token_chunk(k, W.shape[1], g.device)
    for s in range(0, n, step):
        i = idx[s : s + step].long()
        dots = (W[i.clamp_min(0)].float() * g[s : s + step].float()[:, None, :]).sum(-1)
        out[s : s + step] = torch.where(i >= 0, dots, torch.zeros_like(dots))
    return out


# -- Triton kernels -------------------------------------------------------------------------

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


def sparse_rowdot(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Dispatch: Triton where it runs on g's device, else the reference."""
    if triton_runs_on(g.device):
        return sparse_rowdot_triton(idx, g, W)
    return sparse_rowdot_reference(idx, g, W)


# Measured on an H100 at n=32,768, d=768, L0 50 (bench/results/gpu_kernels_h100.json), since the
# atomics are relaxed: sorted 2.0 / 2.9 ms, atomics 1.7 / 3.1 ms at d_sae 24,576 / 98,304 (with the
# default acq_rel ordering the atomics took 5.6 ms at 24,576), dense F^T g 22.9 / 90.4 ms. Sorted
# stays: it is deterministic, and the 0.3 ms it gives up at 24,576 it wins back at 98,304.
GRAD_METHOD = "sorted"


def sparse_decode(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch: the Triton kernel where Triton runs on W_dec's device, embedding_bag on the CPU,
    else the reference."""
    if triton_runs_on(W_dec.device):
        return sparse_decode_triton(idx, val, W_dec, b_dec, x)
    if W_dec.device.type == "cpu":
        return sparse_decode_cpu(idx, val, W_dec, b_dec, x)
    return sparse_decode_reference(idx, val, W_dec, b_dec, x)


def sparse_decoder_grad(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int, method: str | None = None
) -> torch.Tensor:
    """Dispatch: `method` or GRAD_METHOD ("sorted" / "atomics": Triton; "cuda": the csrc
    extension's segmented reduction, when built) where it runs on g's device; on the CPU a torch
    sparse matrix product; else the reference."""
    method = method or GRAD_METHOD
    if method == "cuda" and g.is_cuda and compiled.available():
        return compiled.sparse_decoder_grad_segmented(idx, val, g, d_sae)
    if not triton_runs_on(g.device):
        if g.device.type == "cpu":
            return sparse_decoder_grad_cpu(idx, val, g, d_sae)
        return sparse_decoder_grad_reference(idx, val, g, d_sae)
    if method == "atomics":
        return sparse_decoder_grad_atomic(idx, val, g, d_sae)
    return sparse_decoder_grad_sorted(idx, val, g, d_sae)


def coactivation(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor, d_a: int, d_b: int
) -> torch.Tensor:
    """Dispatch: the csrc extension on CUDA when built, else the reference."""
    if idx_a.is_cuda and compiled.available():
        return compiled.coactivation(idx_a, val_a, idx_b, val_b, d_a, d_b)
    return coactivation_reference(idx_a, val_a, idx_b, val_b, d_a, d_b)
