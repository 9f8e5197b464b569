"""The exact fp32 encode of a ReLU-family SAE on the CPU from a bf16 screen: the encoder product
runs on the CPU's bf16 matrix units (AMX, through torch/oneDNN) at 3-4x the fp32 rate, and only the
pre-activations that product cannot rule out are recomputed, so the features are the fp32 ones.

For tokens xin [n, d] (x - b_dec, fp32) and an encoder W [d, F], b [F], the features are
f_tj = pre_tj where pre_tj > cut_j, else 0 (relu: cut 0; jumprelu: max(threshold, 0)), with
pre_tj the float32 rounding of xin_t . W_j + b_j. Per chunk of tokens:
- P = bf16(xin) bf16(W), fp32-accumulated and rounded to bf16, is within m |xin_t| |W_j| of the
  exact product (m = max_cosine.cpu.cpu_screen_margin(d): the inputs' and the output's bf16
  rounding, the accumulation).
- screen (numba, screen_cpu.py): j is a candidate where P_tj + (b_j - cut_j) + s_t |W_j| >= 0, with
  s_t = m |xin_t| widened by 2^-18 |xin_t| (and b_j - cut_j by 2^-18 of its parts) for the rounding
  of the test itself. A feature active in fp32 is always a candidate.
- refine (numba): each candidate's product in float64 (exact products, an error of d 2^-53 in the
  sum), plus b_j, rounded once to float32: pre_tj, kept where above cut_j.
So a feature's value is its pre-activation to within float32's last bit (a dense fp32 GEMM is
within about d 2^-24 of it), and only a pre-activation that close to its cut can change activity.
Where the screen leaves more than CANDIDATE_MAX_DENSITY of a chunk's features (at least 16 a
token; an SAE early in training, half its features active), screened_codes_cpu returns None and
the caller computes densely; a token with more candidates than its slots (2 CANDIDATE_MAX_DENSITY
F, at least 64: a token of outsized norm) has every feature computed, by a float64 product row.

screened_codes_cpu(xin, W, b, cut) -> ops.codes.cpu.Nonzeros of f, or None (too dense)
"""

from __future__ import annotations

import functools
import weakref

import torch

from ..codes.cpu import Nonzeros
from ..max_cosine.cpu import cpu_screen_margin

# Above this fraction of candidate features the screen gives way to the dense fp32 product (its
# refine then costs more than the fp32 GEMM it replaces: bench/test_kernels_cpu.py
# "evaluate_cpu" and "training_step", results/cpu_screen_encode_pytest.json).
CANDIDATE_MAX_DENSITY = 0.05
CHUNK_BYTES = 16 << 20  # bf16 products per chunk, reused from chunk to chunk
ROUNDING = 2.0**-18  # the widening for the fp32 arithmetic of the screen's own test


class _Encoder:
    """The screen's forms of one encoder matrix W [d, F]: bf16 W, fp32 W^T [F, d] (rows for the
    refine), column norms (at or above the exact ones) [F], float64 W on demand."""

    def __init__(self, W: torch.Tensor):
        self.W = W
        self.Wb = W.bfloat16()
        self.WT = W.t().contiguous()
        self.norms = _norms_up(W, 0)

    @functools.cached_property
    def W64(self) -> torch.Tensor:
        """W in float64, for the tokens whose every feature is computed (made when first asked)."""
        return self.W.double()


# id(W_enc) -> (a weak reference to it, its stamp, _Encoder): eval-mode passes reuse the forms
# batch after batch. The stamp is the tensor's version (bumped by every in-place change through
# autograd's view of it: an optimiser step, copy_), its storage and a float64 sum of its values
# (0.5 ms at 6,144 x 384, against 4 ms to make the forms), so a change made behind autograd's back
# (through .data) is seen too. An entry goes with its tensor. (Tensors compare elementwise, so a
# WeakKeyDictionary cannot hold them.)
_ENCODERS: dict[int, tuple] = {}


def _encoder(W: torch.Tensor) -> _Encoder:
    with torch.no_grad():
        hit = _ENCODERS.get(id(W))
        same = hit is not None and hit[0]() is W and hit[1][:2] == (W._version, W.data_ptr())
        stamp = (W._version, W.data_ptr(), float(W.sum(dtype=torch.float64)) if same else None)
        if same and hit[1] == stamp:
            return hit[2]
        enc = _Encoder(W.detach().float())
        if stamp[2] is None:
            stamp = (*stamp[:2], float(W.sum(dtype=torch.float64)))
    key = id(W)
    _ENCODERS[key] = (weakref.ref(W, lambda _: _ENCODERS.pop(key, None)), stamp, enc)
    return enc


class _Backoff:
    """After the screen declines an encoder W (an SAE early in training has half its features
    active), the next 1, 2, 4, ... 32 calls with that W (the same tensor, whatever its version)
    go straight to the dense product; a success resets it. A dense phase then pays for the failed
    screen (a bf16 product and a scan: a fifth of the dense step at 3,072 x 384) about once in
    32 steps instead of every step. Entries go with their tensors."""

    LONGEST = 32

    def __init__(self):
        self.state: dict[int, list] = {}  # id(W) -> [weak ref, calls left to skip, next skip]

    def _entry(self, W: torch.Tensor) -> list | None:
        e = self.state.get(id(W))
        return e if e is not None and e[0]() is W else None

    def skip(self, W: torch.Tensor) -> bool:
        e = self._entry(W)
        if e is None or e[1] == 0:
            return False
        e[1] -= 1
        return True

    def declined(self, W: torch.Tensor) -> None:
        e = self._entry(W)
        if e is None:
            key = id(W)
            e = self.state[key] = [weakref.ref(W, lambda _: self.state.pop(key, None)), 0, 1]
        e[1], e[2] = e[2], min(2 * e[2], self.LONGEST)

    def succeeded(self, W: torch.Tensor) -> None:
        e = self._entry(W)
        if e is not None:
            e[1], e[2] = 0, 1


_BACKOFF = _Backoff()


def _norms_up(t: torch.Tensor, dim: int) -> torch.Tensor:
    """fp32 vector norms along `dim`, widened past their own rounding (fp32 sums of d squares are
    within about d 2^-24 of exact, the square root adds 2^-24): at or above the exact norms."""
    d = t.shape[dim]
    return torch.linalg.vector_norm(t, dim=dim) * (1 + (d + 4) * 2.0**-23)


def _up(t: torch.Tensor) -> torch.Tensor:
    """float64 -> the float32 at or above each value."""
    f = t.float()
    low = f.double() < t
    return torch.where(low, torch.nextafter(f, torch.tensor(float("inf"))), f)


@torch.no_grad()
def screened_codes_cpu(
    xin: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    cut: torch.Tensor | None = None,
    rows: int | None = None,
) -> Nonzeros | None:
    """The nonzeros of f (module doc) for xin [n, d], W [d, F], b [F] (fp32 CPU tensors) and
    cut [F] (None: 0), `rows` tokens a chunk (None: CHUNK_BYTES of products); None where the
    screen leaves too many candidates, or declined them for W within its backoff (_Backoff)."""
    from ..numba_jit import load

    if _BACKOFF.skip(W):
        return None
    kernels = load("encode.screen_cpu")
    n, d = xin.shape
    F = W.shape[1]
    xin = xin.detach().float().contiguous()
    enc = _encoder(W)
    cut = torch.zeros(F) if cut is None else cut.detach().float().contiguous()
    b = b.detach().float().contiguous()
    gap = b.double() - cut.double()
    shift = _up(gap + ROUNDING * (b.double().abs() + cut.double().abs()))
    s = _norms_up(xin, 1) * ((cpu_screen_margin(d) + ROUNDING) * (1 + 2.0**-20))
    cap = max(64, int(2 * CANDIDATE_MAX_DENSITY * F))  # candidate slots a token
    step = max(1, min(n, rows or CHUNK_BYTES // max(2 * F, 1)))
    P = torch.empty(step, F, dtype=torch.bfloat16)
    idx, cand = torch.empty(step, cap, dtype=torch.int64), torch.empty(step, dtype=torch.int64)
    xb, parts, crowded = xin.bfloat16(), [], False
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        S = torch.mm(xb[lo:hi], enc.Wb, out=P[: hi - lo])
        kernels.screen(S.view(torch.int16).numpy(), shift.numpy(), enc.norms.numpy(), s[lo:hi].numpy(),
                       idx.numpy(), cand.numpy())  # fmt: skip
        c = cand[: hi - lo]
        if int(c.sum()) > max(CANDIDATE_MAX_DENSITY * F, 16) * (hi - lo):
            _BACKOFF.declined(W)
            return None
        over = c > cap  # a token with more candidates than slots: all its features, in float64
        parts.append(_refined(kernels, xin[lo:hi], enc, b, cut, idx, c.masked_fill(over, 0), lo))
        if over.any():
            parts.append(_crowded(xin, lo + over.nonzero().flatten(), enc, b, cut))
            crowded = True
    tok, col, val = (torch.cat(t) for t in zip(*parts)) if parts else (torch.empty(0, dtype=torch.int64),) * 3
    if crowded:  # a crowded token's features came in a later part: tokens back in order
        order = torch.argsort(tok, stable=True)
        tok, col, val = tok[order], col[order], val[order]
    _BACKOFF.succeeded(W)
    per_token = torch.bincount(tok, minlength=n)
    return Nonzeros(tok, col, val.float(), torch.cumsum(per_token, 0) - per_token)


def _crowded(xin: torch.Tensor, tokens: torch.Tensor, enc: _Encoder, b, cut) -> tuple[torch.Tensor, ...]:
    """(tokens, features, values) of every feature of these tokens: their float64 product rows
    (as the refine computes each one, a whole row at once: 8x its dots at 6,144 features), plus
    b, rounded to float32, kept above the cut."""
    pre = (xin[tokens].double() @ enc.W64 + b.double()).float()
    r, j = (pre > cut).nonzero(as_tuple=True)
    return tokens[r], j, pre[r, j]


def _refined(kernels, x, enc: _Encoder, b, cut, idx, cand, tokens) -> tuple[torch.Tensor, ...]:
    """(tokens, features, values) [kept] of the candidates idx[r, :cand[r]] of the rows x [r, d]
    (tokens: their token numbers, an int or int64 [r]) kept by the refine, token by token."""
    r, width = x.shape[0], idx.shape[1]
    cols, vals = torch.empty(r, width, dtype=torch.int64), torch.empty(r, width)
    kept = torch.empty(r, dtype=torch.int64)
    kernels.refine(x.contiguous().numpy(), enc.WT.numpy(), b.numpy(), cut.numpy(), idx.numpy(), cand.numpy(),
                   cols.numpy(), vals.numpy(), kept.numpy())  # fmt: skip
    ids = torch.arange(tokens, tokens + r) if isinstance(tokens, int) else tokens
    total = int(kept.sum())
    out = torch.empty(total, dtype=torch.int64), torch.empty(total, dtype=torch.int64), torch.empty(total)
    starts = torch.cumsum(kept, 0) - kept
    kernels.compact(cols.numpy(), vals.numpy(), kept.numpy(), ids.contiguous().numpy(), starts.numpy(),
                    *(t.numpy() for t in out))  # fmt: skip
    return out
