"""max_ip and pairs_above on the CPU from an int8 screen, for CPUs without bf16 units: the products
run as int8 x int8 -> int32 (torch._int_mm: oneDNN's VNNI dot products where the CPU has them, at
about 4x fp32's rate here, vpmaddubsw elsewhere), and fp32 decides among the few keys the screen
cannot rule out, so the answers are the fp32 ones (the bf16 screen's contract, cpu.py).

Quantisation. Query row i: scale a_i = max|q_i| / 127, q8_i = round(q_i / a_i). Keys: one scale
b = max|k| / R for all of them (R = int8_key_range(): 127, or 64 where the int8 product saturates
int16 pair sums, as oneDNN's pre-VNNI kernels do), k8_j = round(k_j / b). With x~ = a_i q8_i and
y~ = b k8_j (exact in float64), the int32 product acc_ij = q8_i . k8_j is exact, and its value
a_i b acc_ij = x~ . y~ differs from the exact product by

    x.y - x~.y~ = e_x.y + x~.e_y,   e_x = x - x~, e_y = y - y~,

so by at most m_i = min(CS_i, L1_i), two bounds each rigorous:
    CS_i = |e_x|_2 max_j |y_j|_2 + |x~|_2 max_j |e_y_j|_2  (Cauchy-Schwarz on the actual
           rounding errors, measured in float64: the tighter one, about 0.02 for unit rows);
    L1_i = e_i max_j |y_j|_1 + f |x~_i|_1  (each element's error at most half a step:
           e_i = a_i/2, f = b/2, plus 1e-4 of a step for the fp32 division before rounding),
           the worst case when the errors line up.
Both are taken with a relative slack of 1e-6 for their float64 arithmetic. With g = d 2^-23 the
fp32 row product is within g of the exact one. Both bounds are per query row, so the cuts are
too, in the integer units of acc (rounded outwards: no candidate is lost to the rounding of a cut):
- max_ip_int8_cpu: the fp32 winner's acc is at least the row's max acc - (2 m_i + 2 g) / (a_i b);
  the candidates' fp32 row products pick the winner, the smallest index among equal ones.
- pairs_above_int8_cpu: a pair whose fp32 product is above t has acc >= (t - m_i - g) / (a_i b).
With unit rows of d = 384 (768) the Cauchy-Schwarz margin took the mean candidates per row of a
max cosine search from 19 (146) to 8.5 (42) (bench/README.md, "Every CPU kind").
"""

from __future__ import annotations

import functools

import torch

from .cpu import _chunk_rows, screened_max, screened_pairs

QUERY_RANGE = 127
KEY_RANGES = (127, 64)
ROUNDING = 0.5 + 1e-4  # half a quantisation step, plus the fp32 division's error before rounding
SLACK = 1 + 1e-6  # the bounds' own float64 arithmetic


@functools.cache
def int8_key_range() -> int | None:
    """The largest key range R (of KEY_RANGES) at which torch's int8 product is exact here against
    query values up to 127: products of extreme values of either sign, whose int16 pair sums
    overflow where the CPU's kernel saturates them (oneDNN without VNNI: 2 x 255 x 127 > 32,767).
    None where no range is exact or torch has no CPU int8 product. Cached: the CPU and the
    process's ISA caps (ONEDNN_MAX_CPU_ISA) do not change while it runs."""
    if not hasattr(torch, "_int_mm"):
        return None
    for r in KEY_RANGES:
        try:
            exact = all(_exact(qa, kb) for qa in (QUERY_RANGE, -QUERY_RANGE) for kb in (r, -r))
        except RuntimeError:
            return None
        if exact:
            return r
    return None


def _exact(qa: int, kb: int) -> bool:
    a = torch.full((32, 256), qa, dtype=torch.int8)
    a[:, 1::7] = -qa  # a few sign changes: a saturated pair sum cannot hide among the others
    b = torch.full((64, 256), kb, dtype=torch.int8)
    got = torch.empty(32, 64, dtype=torch.int32)
    torch._int_mm(a, b.t(), out=got)
    return bool((got == a.int() @ b.t().int()).all())


def int8_screen_available(d: int) -> bool:
    """Whether the int8 screen runs here for rows of length d: an exact int8 product, and int32
    sums that cannot overflow (d 127 R < 2^31)."""
    r = int8_key_range()
    return r is not None and d * QUERY_RANGE * r < 2**31


class _Quantised:
    """Rows quantised for the screen: int8 values (zero columns up to a multiple of 4), scale per
    row (queries) or one for all (keys), and per row (float64) the norms the margins read: |x|_2,
    |x|_1, |x~|_2, |x~|_1 and |x - x~|_2."""

    def __init__(self, x: torch.Tensor, qmax: int, per_row: bool):
        amax = x.abs().amax(dim=1) if per_row else x.abs().amax().expand(x.shape[0])
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        q8 = torch.round(x / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
        # Zero columns up to a multiple of 4 (VNNI's group): they add nothing to any product, and
        # torch 2.13's CPU _int_mm returns garbage for an inner dimension of 1.
        pad = -x.shape[1] % 4
        self.int8 = torch.nn.functional.pad(q8, (0, pad)) if pad else q8
        self.scale = scale.double()
        x64, xt = x.double(), q8.double() * self.scale[:, None]
        self.l2, self.l1 = x64.norm(dim=1), x64.abs().sum(dim=1)
        self.t_l2, self.t_l1 = xt.norm(dim=1), xt.abs().sum(dim=1)
        self.err = (x64 - xt).norm(dim=1)


def _margins(q: _Quantised, k: _Quantised, d: int) -> torch.Tensor:
    """m_i (module doc), float64 [rows of q]."""
    cs = q.err * float(k.l2.max()) + q.t_l2 * float(k.err.max())
    e, f = q.scale * ROUNDING, float(k.scale[0]) * ROUNDING
    l1 = e * float(k.l1.max()) + f * q.t_l1
    return torch.minimum(cs, l1) * SLACK


class _Screen:
    """The keys quantised once and the per-chunk buffers, reused from chunk to chunk (as the bf16
    screen's _Chunks: a fresh output per product costs much of the product's speed)."""

    def __init__(self, kn: torch.Tensor, step: int, cap: int):
        r = int8_key_range()
        if r is None:
            from ...errors import InvalidArgumentError

            raise InvalidArgumentError("the int8 screen needs an exact CPU int8 product (torch._int_mm)")
        self.keys = _Quantised(kn, r, per_row=False)
        self.k8t = self.keys.int8.t()  # [d, Fk], a view: the product reads the rows as they are
        self.scores = torch.empty(step, kn.shape[0], dtype=torch.int32)
        self.idx = torch.empty(step, cap, dtype=torch.int64)
        self.n = torch.empty(step, dtype=torch.int64)

    def scores_of(self, q: torch.Tensor) -> tuple[torch.Tensor, _Quantised]:
        qq = _Quantised(q, QUERY_RANGE, per_row=True)
        out = self.scores[: q.shape[0]]
        torch._int_mm(qq.int8, self.k8t, out=out)
        return out, qq

    def unit(self, qq: _Quantised) -> torch.Tensor:
        """a_i b: the value of one integer step of row i's scores."""
        return qq.scale * float(self.keys.scale[0])

    def scan(self, S: torch.Tensor, per_row: torch.Tensor, *, fixed: bool):
        """Per row r: the keys at or above per_row[r] (fixed) or the row's max - per_row[r]."""
        from ..numba_jit import load

        kernels = load("max_cosine.scan_cpu")
        rows = S.shape[0]
        idx, n = self.idx[:rows], self.n[:rows]
        kernel = kernels.int_cut_scan if fixed else kernels.int_max_scan
        kernel(S.numpy(), per_row.contiguous().numpy(), idx.shape[1], idx.numpy(), n.numpy())
        return idx, n


def _fp32_error(d: int) -> float:
    return d * 2**-23


@torch.no_grad()
def max_ip_int8_cpu(
    qn: torch.Tensor, kn: torch.Tensor, rows: int | None = None, limit_per_row: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """max_ip in fp32 (see module doc). qn [Fq, d], kn [Fk, d] fp32 unit rows on the CPU."""
    d = qn.shape[1]
    step = _chunk_rows(kn.shape[0], rows, score_bytes=4)
    screen = _Screen(kn, step, limit_per_row)

    def candidates(q):
        S, qq = screen.scores_of(q)
        slack = (2 * _margins(qq, screen.keys, d) + 2 * _fp32_error(d)) / screen.unit(qq)
        return screen.scan(S, torch.ceil(slack).long() + 1, fixed=False)

    return screened_max(qn, kn, step, limit_per_row, candidates)


@torch.no_grad()
def pairs_above_int8_cpu(
    qn: torch.Tensor, kn: torch.Tensor, threshold: float, rows: int | None = None, cap: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates for every pair whose fp32 product is above `threshold` (see module doc):
    (i, j, fp32 row product); the caller keeps > threshold."""
    d = qn.shape[1]
    step = _chunk_rows(kn.shape[0], rows, score_bytes=4)
    screen = _Screen(kn, step, cap)

    def candidates(q):
        S, qq = screen.scores_of(q)
        low = (threshold - _margins(qq, screen.keys, d) - _fp32_error(d)) / screen.unit(qq)
        cuts = torch.floor(low).long() - 1
        idx, n = screen.scan(S, cuts, fixed=True)
        return idx, n, lambda rows: (S[rows] >= cuts[rows, None]).nonzero(as_tuple=True)

    return screened_pairs(qn, kn, step, candidates)


__all__ = ["int8_key_range", "int8_screen_available", "max_ip_int8_cpu", "pairs_above_int8_cpu"]
