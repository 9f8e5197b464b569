"""max_ip and pairs_above on the CPU from a bf16 screen: the products run on the CPU's bf16 matrix
or vector units (AMX, AVX-512 BF16, through torch/oneDNN), and fp32 decides among the few keys the
screen cannot rule out, so the answers are the fp32 ones at about bf16's cost.

Per chunk of `rows` query rows (sized so the bf16 scores stay in the last-level cache),
S = bf16(qn) bf16(kn)^T
accumulates in fp32 and is rounded to bf16 once. With m = cpu_screen_margin(d), every screened
score is within m of the exact product; with g = d 2^-23 the fp32 row product is within g of it.
- max_ip_screened_cpu: the fp32 winner's screened score is at least (the row's best screened
  score) - 2m - 2g, so every key above that is a candidate; their fp32 row products
  qn[i] . kn[j] pick the winner, the smallest index among equal ones (max_ip's tie rule). The
  candidates are found in two passes over each row's bf16 scores by a numba kernel (torch's
  mask + nonzero took twice the product's time). A row with more than `limit_per_row` candidates
  (duplicated keys, tiny d) is answered by its fp32 GEMM row.
- pairs_above_screened_cpu: a pair above the threshold has a screened score above threshold - m:
  those are the candidates (found by a numba scan against the fixed cut), returned with their fp32
  row products (the caller keeps > threshold).
"""

from __future__ import annotations

import functools

import torch

from ..tiles import bf16_margin

BF16_ULP = 2**-8  # bf16 rounding: at most 2^-8 relative (8 significant bits)


def cpu_screen_margin(d: int) -> float:
    """How far a screened score can be from the exact product of two unit rows of length d: the
    bf16 inputs and fp32 accumulation (bf16_margin), then the bf16 rounding of the output (at most
    2^-8 of its magnitude, which is at most 1 + bf16_margin)."""
    m = bf16_margin(d)
    return m + BF16_ULP * (1 + m)


def _chunk_rows(n_keys: int, rows: int | None) -> int:
    """Query rows per chunk: about 16 MiB of bf16 scores, a power of two from 16 to 1,024 (so that
    it divides the 4,096-row shards of stitchkit.dist)."""
    if rows is not None:
        return max(1, rows)
    target = max(16, min(1024, (16 << 20) // max(2 * n_keys, 1)))
    return 1 << (target.bit_length() - 1)


def _below(t: torch.Tensor) -> torch.Tensor:
    """t rounded down to bf16 (so that comparing bf16 scores with it loses no candidate)."""
    b = t.bfloat16()
    low = b.float() > t
    if low.any():
        b[low] = (t[low] - t[low].abs() * BF16_ULP - 1e-30).bfloat16()
    return b


@functools.cache
def _kernels():
    """The numba scan kernels, compiled on first use. Both compare bf16 as order-preserving
    integers (the int16 bits with a negative value's magnitude bits flipped: signed order is value
    order) and keep, per row r of the scores, the first `cap` keys j (ascending) at or above the
    row's threshold in out_idx[r] and their count in out_n[r] (which may exceed cap).
        max_scan(scores, slack, cap, out_idx, out_n)   threshold: the row's max - slack, rounded
                                                        down to bf16 (two passes, the second from cache)
        fixed_scan(scores, key, cap, out_idx, out_n)   threshold: one order key for every row"""
    import numba
    import numpy as np

    def jit(fn, **kw):
        try:
            return numba.njit(cache=True, **kw)(fn)
        except RuntimeError:  # nowhere writable to cache: compile in each process instead
            return numba.njit(**kw)(fn)

    def collect(row, thr, cap, out_row):
        c = 0
        for j in range(len(row)):
            x = row[j]
            if (x ^ ((x >> 15) & 0x7FFF)) >= thr:
                if c < cap:
                    out_row[c] = j
                c += 1
        return c

    collect = jit(collect)

    def row_threshold(row, slack):
        best = -32768
        for j in range(len(row)):
            x = row[j]
            key = x ^ ((x >> 15) & 0x7FFF)
            if key > best:
                best = key
        bits = best ^ ((best >> 15) & 0x7FFF)  # back to the bf16 bits of the max
        box = np.empty(1, np.uint32)
        box[0] = np.uint32(bits & 0xFFFF) << 16
        t = box.view(np.float32)[0] - np.float32(slack)
        box.view(np.float32)[0] = t
        tb = np.int64(box[0] >> 16)  # truncated: rounds towards zero
        if t < 0 and (box[0] & 0xFFFF) != 0:
            tb += 1  # a negative truncated towards zero rose: one bf16 step down (larger magnitude)
        if tb >= 32768:
            tb -= 65536  # as int16
        return tb ^ ((tb >> 15) & 0x7FFF)

    row_threshold = jit(row_threshold)

    def max_scan(scores, slack, cap, out_idx, out_n):
        for r in numba.prange(scores.shape[0]):
            out_n[r] = collect(scores[r], row_threshold(scores[r], slack), cap, out_idx[r])

    def fixed_scan(scores, key, cap, out_idx, out_n):
        for r in numba.prange(scores.shape[0]):
            out_n[r] = collect(scores[r], key, cap, out_idx[r])

    return jit(max_scan, parallel=True), jit(fixed_scan, parallel=True)


def _order_keys(b: torch.Tensor) -> torch.Tensor:
    """bf16 values as int16 keys in the same order (what the scan kernels compare)."""
    x = b.view(torch.int16)
    return x ^ ((x >> 15) & 0x7FFF)


def _scan(S: torch.Tensor, threshold: float | int, cap: int, *, fixed: bool = False):
    """Per row r of the bf16 scores S: idx[r, :n[r]], the keys j (ascending) at or above the row's
    threshold, the first `cap` of them; n[r] may exceed cap. The threshold is (max_j S[r, j] -
    `threshold`) rounded down to bf16, or with `fixed` the order key `threshold` for every row."""
    import numba

    idx = torch.empty(S.shape[0], cap, dtype=torch.int64)
    n = torch.empty(S.shape[0], dtype=torch.int64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    max_scan, fixed_scan = _kernels()
    kernel, arg = (fixed_scan, int(threshold)) if fixed else (max_scan, float(threshold))
    kernel(S.view(torch.int16).numpy(), arg, cap, idx.numpy(), n.numpy())
    return idx, n


def _kept(idx: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, slot) of every candidate a scan kept: slot c < min(n[r], width of idx)."""
    width = idx.shape[1]
    return (torch.arange(width)[None, :] < n.clamp(max=width)[:, None]).nonzero(as_tuple=True)


def _decide(q: torch.Tensor, kn: torch.Tensor, idx: torch.Tensor, n: torch.Tensor):
    """The fp32 winner of each row among its candidates idx[r, :n[r]]: the largest row product
    q[r] . kn[j] (summed in fp32 by torch), the smallest j among equal ones."""
    sub = idx[:, : int(n.max())]
    r, c = _kept(sub, n)
    pad = torch.full(sub.shape, float("-inf"), dtype=torch.float32)
    pad[r, c] = (q[r] * kn[sub[r, c]]).sum(dim=1)
    values, slot = pad.max(dim=1)  # the first maximal slot: candidates are in ascending key order
    return values, sub.gather(1, slot[:, None]).squeeze(1)


@torch.no_grad()
def max_ip_screened_cpu(
    qn: torch.Tensor, kn: torch.Tensor, rows: int | None = None, limit_per_row: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """max_ip in fp32 (see module doc). qn [Fq, d], kn [Fk, d] fp32 unit rows on the CPU."""
    Fq, d = qn.shape
    slack = 2 * cpu_screen_margin(d) + 2 * d * 2**-23
    kb = kn.bfloat16().t().contiguous()
    step = _chunk_rows(kn.shape[0], rows)
    values = torch.empty(Fq, dtype=torch.float32)
    indices = torch.empty(Fq, dtype=torch.int64)
    for s in range(0, Fq, step):
        q = qn[s : s + step]
        idx, n = _scan(q.bfloat16() @ kb, slack, limit_per_row)
        over = n > limit_per_row
        v, k = _decide(q, kn, idx, n.clamp(max=limit_per_row))
        if over.any():  # rows with too many near-equal keys: their fp32 GEMM rows decide
            v[over], k[over] = (q[over] @ kn.t()).max(dim=1)
        values[s : s + step], indices[s : s + step] = v, k
    return values, indices


@torch.no_grad()
def max_ip_bf16_cpu(qn: torch.Tensor, kn: torch.Tensor, rows: int | None = None):
    """max_ip at bf16 precision (the screen's argmax, no fp32 decision)."""
    kb = kn.bfloat16().t().contiguous()
    step = _chunk_rows(kn.shape[0], rows)
    values = torch.empty(qn.shape[0], dtype=torch.float32)
    indices = torch.empty(qn.shape[0], dtype=torch.int64)
    for s in range(0, qn.shape[0], step):
        v, k = (qn[s : s + step].bfloat16() @ kb).max(dim=1)
        values[s : s + step], indices[s : s + step] = v.float(), k
    return values, indices


@torch.no_grad()
def pairs_above_screened_cpu(
    qn: torch.Tensor, kn: torch.Tensor, threshold: float, rows: int | None = None, cap: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates for every pair above `threshold` (see module doc): (i, j, fp32 row product)."""
    d = qn.shape[1]
    kb = kn.bfloat16().t().contiguous()
    step = _chunk_rows(kn.shape[0], rows)
    cut = _below(torch.tensor([threshold - cpu_screen_margin(d)], dtype=torch.float32))
    key = int(_order_keys(cut)[0])
    out_i, out_j = [], []
    for s in range(0, qn.shape[0], step):
        S = qn[s : s + step].bfloat16() @ kb
        idx, n = _scan(S, key, cap, fixed=True)
        r, c = _kept(idx, n)
        over = n > cap
        keep = ~over[r]
        i, j = r[keep], idx[r[keep], c[keep]]
        if over.any():  # rows with more than `cap` candidates: all of their keys at the cut
            crowded = over.nonzero().flatten()
            ri, rj = (S[crowded] >= cut).nonzero(as_tuple=True)
            i, j = torch.cat([i, crowded[ri]]), torch.cat([j, rj])
        out_i.append(i + s)
        out_j.append(j)
    if not out_i:
        e = torch.empty(0, dtype=torch.int64)
        return e, e.clone(), torch.empty(0)
    i, j = torch.cat(out_i), torch.cat(out_j)
    return i, j, (qn[i] * kn[j]).sum(dim=1)
