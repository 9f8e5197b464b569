"""max_ip and pairs_above on the CPU from a bf16 screen: the products run on the CPU's bf16 matrix
or vector units (AMX, AVX-512 BF16, through torch/oneDNN), and fp32 decides among the few keys the
screen cannot rule out, so the answers are the fp32 ones at about bf16's cost.

Per chunk of `rows` query rows (its bf16 scores in one buffer reused from chunk to chunk),
S = bf16(qn) bf16(kn)^T
accumulates in fp32 and is rounded to bf16 once. With m = cpu_screen_margin(d), every screened
score is within m of the exact product; with g = d 2^-23 the fp32 row product is within g of it.
- max_ip_screened_cpu: the fp32 winner's screened score is at least (the row's best screened
  score) - 2m - 2g, so every key above that is a candidate; their fp32 row products
  qn[i] . kn[j] pick the winner, the smallest index among equal ones (max_ip's tie rule). The
  candidates are found by the numba scans of scan_cpu.py right after each chunk's product, while
  its scores are in cache (torch's mask + nonzero took twice the product's time). A row with more
  than `limit_per_row` candidates (duplicated keys, tiny d) is answered by its fp32 GEMM row.
- pairs_above_screened_cpu: a pair above the threshold has a screened score above threshold - m:
  those are the candidates (found by a numba scan against the fixed cut), returned with their fp32
  row products (the caller keeps > threshold).
"""

from __future__ import annotations

import torch

from ..tiles import bf16_margin

BF16_ULP = 2**-8  # bf16 rounding: at most 2^-8 relative (8 significant bits)


def cpu_screen_margin(d: int) -> float:
    """How far a screened score can be from the exact product of two unit rows of length d: the
    bf16 inputs and fp32 accumulation (bf16_margin), then the bf16 rounding of the output (at most
    2^-8 of its magnitude, which is at most 1 + bf16_margin)."""
    m = bf16_margin(d)
    return m + BF16_ULP * (1 + m)


# Query rows per chunk. With its output reused (_Chunks), oneDNN's bf16 product runs at about
# 2.5 TFLOP/s on 512 rows, half that on 128 and a third on 64 (bench/cpu_bf16_screen.py,
# "chunk_sweep" in bench/results/cpu_bf16_screen.json); more rows gained nothing in the whole
# search, whose scan then reads its scores from further out in the cache hierarchy.
CHUNK_BYTES = 64 << 20
MAX_CHUNK_ROWS = 512


def _chunk_rows(n_keys: int, rows: int | None, score_bytes: int = 2) -> int:
    """Query rows per chunk: at most CHUNK_BYTES of scores (bf16: 2 bytes, the int8 screen's int32:
    4), a power of two from 16 to MAX_CHUNK_ROWS (so that it divides the 4,096-row shards of
    stitchkit.dist)."""
    if rows is not None:
        return max(1, rows)
    target = max(16, min(MAX_CHUNK_ROWS, CHUNK_BYTES // max(score_bytes * n_keys, 1)))
    return 1 << (target.bit_length() - 1)


def _below(t: torch.Tensor) -> torch.Tensor:
    """t rounded down to bf16 (so that comparing bf16 scores with it loses no candidate)."""
    b = t.bfloat16()
    low = b.float() > t
    if low.any():
        b[low] = (t[low] - t[low].abs() * BF16_ULP - 1e-30).bfloat16()
    return b


def _order_keys(b: torch.Tensor) -> torch.Tensor:
    """bf16 values as int16 keys in the same order (what the scan kernels compare)."""
    x = b.view(torch.int16)
    return x ^ ((x >> 15) & 0x7FFF)


class _Chunks:
    """The per-chunk buffers of a screen over keys kb [d, Fk], reused from chunk to chunk: a fresh
    [rows, Fk] output for every product costs a third of the bf16 GEMM's speed (the pages are
    touched for the first time by the GEMM), and a reused one stays in cache for the scan that
    reads it right after. chunk(q) -> the bf16 scores of q against every key."""

    def __init__(self, kb: torch.Tensor, step: int, cap: int):
        self.kb = kb
        self.scores = torch.empty(step, kb.shape[1], dtype=torch.bfloat16)
        self.idx = torch.empty(step, cap, dtype=torch.int64)
        self.n = torch.empty(step, dtype=torch.int64)

    def scores_of(self, q: torch.Tensor) -> torch.Tensor:
        return torch.mm(q.bfloat16(), self.kb, out=self.scores[: q.shape[0]])

    def scan(self, S: torch.Tensor, threshold: float | int, *, fixed: bool = False):
        """Per row r of the bf16 scores S: idx[r, :n[r]], the keys j (ascending) at or above the
        row's threshold, the first `cap` of them; n[r] may exceed cap. The threshold is (max_j
        S[r, j] - `threshold`) rounded down to bf16, or with `fixed` the order key `threshold`
        for every row (views of the reused buffers: use them before the next chunk)."""
        from ..numba_jit import load

        kernels = load("max_cosine.scan_cpu")  # with numba's threads set to torch's
        rows = S.shape[0]
        idx, n = self.idx[:rows], self.n[:rows]
        kernel, arg = (kernels.fixed_scan, int(threshold)) if fixed else (kernels.max_scan, float(threshold))
        kernel(S.view(torch.int16).numpy(), arg, idx.shape[1], idx.numpy(), n.numpy())
        return idx, n


def _kept(idx: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, slot) of every candidate a scan kept: slot c < min(n[r], width of idx)."""
    width = idx.shape[1]
    return (torch.arange(width)[None, :] < n.clamp(max=width)[:, None]).nonzero(as_tuple=True)


def _decide(q: torch.Tensor, kn: torch.Tensor, idx: torch.Tensor, n: torch.Tensor):
    """The fp32 winner of each row among its candidates idx[r, :n[r]]: the largest row product
    q[r] . kn[j] (summed in fp32 by torch), the smallest j among equal ones. Most rows have one
    candidate, which wins: only the others are padded and compared."""
    first = idx[:, 0]
    values, indices = (q * kn[first]).sum(dim=1), first.clone()
    multi = (n > 1).nonzero().flatten()
    if len(multi):
        sub, m = idx[multi, : int(n.max())], n[multi]
        r, c = _kept(sub, m)
        pad = torch.full(sub.shape, float("-inf"), dtype=torch.float32)
        pad[r, c] = (q[multi[r]] * kn[sub[r, c]]).sum(dim=1)
        best, slot = pad.max(dim=1)  # the first maximal slot: candidates are in ascending key order
        values[multi], indices[multi] = best, sub.gather(1, slot[:, None]).squeeze(1)
    return values, indices


def screened_max(qn: torch.Tensor, kn: torch.Tensor, step: int, limit_per_row: int, candidates):
    """max_ip from a screen (this module's or int8_cpu's): per chunk q of `step` query rows,
    candidates(q) -> (idx, n), each row's candidate keys idx[r, :n[r]] (ascending; n may exceed
    idx's width, limit_per_row); the fp32 row products decide among them (_decide), and a row
    with more than limit_per_row candidates is answered by its fp32 GEMM row."""
    values = torch.empty(qn.shape[0], dtype=torch.float32)
    indices = torch.empty(qn.shape[0], dtype=torch.int64)
    for s in range(0, qn.shape[0], step):
        q = qn[s : s + step]
        idx, n = candidates(q)
        over = n > limit_per_row
        v, k = _decide(q, kn, idx, n.clamp(max=limit_per_row))
        if over.any():  # rows with too many near-equal keys: their fp32 GEMM rows decide
            v[over], k[over] = (q[over] @ kn.t()).max(dim=1)
        values[s : s + step], indices[s : s + step] = v, k
    return values, indices


def screened_pairs(qn: torch.Tensor, kn: torch.Tensor, step: int, candidates):
    """pairs_above from a screen: per chunk q of `step` query rows, candidates(q) -> (idx, n,
    at_cut), each row's candidate keys idx[r, :n[r]] and, for the rows whose n exceeds idx's
    width, at_cut(rows) -> (ri, rj) every key of those rows at the cut. Returns (i, j, fp32 row
    product) of every candidate (the caller keeps > threshold)."""
    out_i, out_j = [], []
    for s in range(0, qn.shape[0], step):
        idx, n, at_cut = candidates(qn[s : s + step])
        r, c = _kept(idx, n)
        over = n > idx.shape[1]
        keep = ~over[r]
        i, j = r[keep], idx[r[keep], c[keep]]
        if over.any():  # rows with more candidates than the scan keeps: all of their keys at the cut
            crowded = over.nonzero().flatten()
            ri, rj = at_cut(crowded)
            i, j = torch.cat([i, crowded[ri]]), torch.cat([j, rj])
        out_i.append(i + s)
        out_j.append(j)
    if not out_i:
        e = torch.empty(0, dtype=torch.int64)
        return e, e.clone(), torch.empty(0)
    i, j = torch.cat(out_i), torch.cat(out_j)
    return i, j, (qn[i] * kn[j]).sum(dim=1)


@torch.no_grad()
def max_ip_screened_cpu(
    qn: torch.Tensor, kn: torch.Tensor, rows: int | None = None, limit_per_row: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """max_ip in fp32 (see module doc). qn [Fq, d], kn [Fk, d] fp32 unit rows on the CPU."""
    d = qn.shape[1]
    slack = 2 * cpu_screen_margin(d) + 2 * d * 2**-23
    step = _chunk_rows(kn.shape[0], rows)
    chunks = _Chunks(kn.bfloat16().t().contiguous(), step, limit_per_row)
    return screened_max(qn, kn, step, limit_per_row, lambda q: chunks.scan(chunks.scores_of(q), slack))


@torch.no_grad()
def max_ip_bf16_cpu(qn: torch.Tensor, kn: torch.Tensor, rows: int | None = None):
    """max_ip at bf16 precision (the screen's argmax, no fp32 decision)."""
    step = _chunk_rows(kn.shape[0], rows)
    chunks = _Chunks(kn.bfloat16().t().contiguous(), step, 1)
    values = torch.empty(qn.shape[0], dtype=torch.float32)
    indices = torch.empty(qn.shape[0], dtype=torch.int64)
    for s in range(0, qn.shape[0], step):
        v, k = chunks.scores_of(qn[s : s + step]).max(dim=1)
        values[s : s + step], indices[s : s + step] = v.float(), k
    return values, indices


@torch.no_grad()
def pairs_above_screened_cpu(
    qn: torch.Tensor, kn: torch.Tensor, threshold: float, rows: int | None = None, cap: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates for every pair above `threshold` (see module doc): (i, j, fp32 row product)."""
    d = qn.shape[1]
    step = _chunk_rows(kn.shape[0], rows)
    chunks = _Chunks(kn.bfloat16().t().contiguous(), step, cap)
    cut = _below(torch.tensor([threshold - cpu_screen_margin(d)], dtype=torch.float32))
    key = int(_order_keys(cut)[0]) or -1  # +0 as a cut would drop -0 (whose key is -1)

    def candidates(q):
        S = chunks.scores_of(q)
        idx, n = chunks.scan(S, key, fixed=True)
        return idx, n, lambda rows: (S[rows] >= cut).nonzero(as_tuple=True)

    return screened_pairs(qn, kn, step, candidates)
