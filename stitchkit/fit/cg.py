"""The least-squares decoder refit at any width: conjugate gradients on the normal equations with
the Gram matrix left implicit, so no [d_sae, d_sae] matrix is ever formed.

The refit solves (A + diag(reg)) [W; b] = B + diag(reg) [W_old; 0], A = c1^T c1, B = c1^T x over
the codes c1 = [c, 1] of the retraining tokens (measure.normal's quantities). A product A P is
c1^T (c1 P): two sparse products over the codes' nonzeros, which are kept from one pass over the
tokens. Memory: about 40 bytes per nonzero (n x L0: indices token- and feature-major, values in
float64 and float32) plus six [d_sae, d_in] float64 blocks, against 32 bytes per entry of
[d_sae, d_sae] for the dense solve (retrain._DENSE_BYTES); time: 4 n L0 d_in flops an iteration,
memory bound. Each of the d_in right-hand sides is its own CG (its own step sizes), all sharing
each product; Jacobi preconditioning (diag of A) and a warm start at the old decoder. The
iterations take float32 products and check the true residual in float64 (solve_cg). It stops
when every column's true residual is below `tol` relative to its right-hand side (the answer is
the dense solve's within about tol x the system's condition number), or, with `mse_tol`, when
the objective's recent decreases say it is within about mse_tol of its minimum: the refit's MSE
is then the least-squares one to that tolerance, while the decoder rows of nearly collinear
features (which a Frankenstein model has: features of several widths that co-fire) may still
move along directions that barely change the MSE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import dist
from ..ops.dispatch import numba_installed


@dataclass
class CGReport:
    """How the solve ended: iterations taken, the largest relative residual (true, float64),
    whether it converged and by which test ("residual", or "objective": the last iterations'
    decrease of the objective, an estimate of its remaining gap, under mse_tol; `gap` that
    estimate relative to the objective), and the products' dtype the last round took."""

    iterations: int
    residual: float
    converged: bool
    products: str = "float64"
    reason: str = "residual"
    gap: float = float("nan")

    def describe(self) -> str:
        if not self.converged:
            state = "stopped at max_iter"
        elif self.reason == "objective":
            state = f"converged: objective within about {self.gap:.0e} of its minimum"
        else:
            state = "converged"
        return (
            f"conjugate gradients, implicit Gram ({self.products} products): {self.iterations} "
            f"iterations, true residual {self.residual:.1e} ({state})"
        )


class _NonzeroChunk:
    """One chunk's codes as their nonzeros (ops.codes.cpu), for its share of diag(c^T c)."""

    def __init__(self, f: torch.Tensor, width: int):
        from ..ops.codes.cpu import nonzeros_cpu

        self.nz = nonzeros_cpu(f, max_density=1.0)  # never None for a non-empty f
        self.n, self.width, self.nnz = f.shape[0], width, len(self.nz.values)

    def sq_sums(self, width: int) -> torch.Tensor:
        return torch.bincount(self.nz.cols, weights=self.nz.values.pow(2), minlength=width)


class _Nonzeros:
    """Codes c [n, width] by their nonzeros, token-major and feature-major, for numba's products
    (ops.codes.kernels_cpu) in one pass each over all tokens; values float64 and, once asked
    for, float32. rows: int64 [nnz] ascending (each entry's token), cols, values [nnz]."""

    def __init__(self, width: int, n: int, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor):
        from ..ops.codes.cpu import FeatureMajor
        from ..ops.numba_jit import load

        self.kernels = load("codes.kernels_cpu")
        self.width, self.n = width, n
        counts = torch.bincount(rows, minlength=n)
        self.crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.cols = cols.contiguous()
        by_feature = FeatureMajor(rows, self.cols, width)
        self.fcrow, self.tok = by_feature.crow, by_feature.tok
        values = values.double().contiguous()
        self.values = {torch.float64: values}
        self.fvalues = {torch.float64: values[by_feature.perm].contiguous()}

    @classmethod
    def from_chunks(cls, chunks: list[_NonzeroChunk], width: int) -> _Nonzeros:
        offsets = torch.tensor([0] + [c.n for c in chunks]).cumsum(0)
        rows = torch.cat([c.nz.rows + o for c, o in zip(chunks, offsets.tolist())])
        return cls(width, int(offsets[-1]), rows, torch.cat([c.nz.cols for c in chunks]),
                   torch.cat([c.nz.values for c in chunks]))  # fmt: skip

    def _vals(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if dtype not in self.values:
            self.values[dtype] = self.values[torch.float64].to(dtype)
            self.fvalues[dtype] = self.fvalues[torch.float64].to(dtype)
        return self.values[dtype], self.fvalues[dtype]

    def gram_times(self, W: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        """out[:-1] = c^T (c W + b), out[-1] = sum of c W + b over the tokens (W's dtype)."""
        vals, fvals = self._vals(W.dtype)
        y = torch.empty(self.n, W.shape[1], dtype=W.dtype)
        self.kernels.matmul(self.crow.numpy(), self.cols.numpy(), vals.numpy(), W.numpy(), b.numpy(),
                            y.numpy())  # fmt: skip
        top = torch.empty(self.width, W.shape[1], dtype=W.dtype)
        self.kernels.t_matmul(self.fcrow.numpy(), self.tok.numpy(), fvals.numpy(), y.numpy(), top.numpy())
        out[:-1] = top
        out[-1] = y.sum(0, dtype=torch.float64)


class _CsrChunk:
    """One chunk's codes as torch CSR matrices (and their transpose), for other devices."""

    def __init__(self, f: torch.Tensor, width: int):
        self.csr = {torch.float64: (f.to_sparse_csr(), f.t().contiguous().to_sparse_csr())}
        self.nnz = self.csr[torch.float64][0]._nnz()

    def _pair(self, dtype: torch.dtype):
        if dtype not in self.csr:
            self.csr[dtype] = tuple(m.to(dtype) for m in self.csr[torch.float64])
        return self.csr[dtype]

    def times(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._pair(W.dtype)[0] @ W + b

    def t_times(self, y: torch.Tensor) -> torch.Tensor:
        return self._pair(y.dtype)[1] @ y

    def sq_sums(self, width: int) -> torch.Tensor:
        csr = self.csr[torch.float64][0]
        return torch.bincount(csr.col_indices(), weights=csr.values().pow(2), minlength=width)


class SparseCodes:
    """The codes of the tokens this rank holds, for products c P and c^T Y."""

    def __init__(self, width: int, numba: bool | None = None):
        """numba: the CPU's numba products (None: where numba imports), else torch's CSR ones."""
        self.width = width
        self.numba = numba_installed() if numba is None else numba
        self.chunks: list[_NonzeroChunk | _CsrChunk] = []
        self.nnz = 0
        self._all: _Nonzeros | None = None
        self._used = False
        self.reduce = True  # products summed over ranks (each rank holds its own tokens)

    @classmethod
    def from_nonzeros(cls, width: int, n: int, rows: torch.Tensor, cols: torch.Tensor,
                      values: torch.Tensor, reduce: bool = True) -> SparseCodes:  # fmt: skip
        """Codes [n, width] given by their nonzeros (CPU; rows ascending), for numba's products.
        reduce=False: these are every rank's codes already (products are not summed over ranks)."""
        codes = cls(width, numba=True)
        codes._all = _Nonzeros(width, n, rows, cols, values)
        codes._used, codes.nnz, codes.reduce = True, len(values), reduce
        return codes

    def add(self, f: torch.Tensor):
        """Keep one chunk's dense codes f [n, width] as their nonzeros (float64); returns the
        chunk, whose sq_sums(width) gives its share of diag(c^T c)."""
        if self._used:
            raise RuntimeError("SparseCodes: every chunk must be added before the first product")
        f = f.detach().double()
        kind = _NonzeroChunk if f.device.type == "cpu" and self.numba else _CsrChunk
        chunk = kind(f, self.width)
        self.chunks.append(chunk)
        self.nnz += chunk.nnz
        return chunk

    def _merged(self) -> _Nonzeros | None:
        self._used = True
        if self._all is None and self.chunks and isinstance(self.chunks[0], _NonzeroChunk):
            # All chunks at once: one pass over [width, d] per product, not one per chunk.
            self._all, self.chunks = _Nonzeros.from_chunks(self.chunks, self.width), []
        return self._all

    def t_times(self, Y: torch.Tensor) -> torch.Tensor:
        """c^T Y [width, d] (float64, this rank's tokens) for Y [n, d] float64, the kept tokens' rows
        in the order they were added."""
        out = torch.zeros(self.width, Y.shape[1], dtype=torch.float64, device=Y.device)
        merged = self._merged()
        if merged is not None:
            merged.kernels.t_matmul(merged.fcrow.numpy(), merged.tok.numpy(),
                                    merged.fvalues[torch.float64].numpy(), Y.contiguous().numpy(),
                                    out.numpy())  # fmt: skip
            return out
        lo = 0
        for chunk in self.chunks:
            n = chunk._pair(torch.float64)[0].shape[0]
            out += chunk.t_times(Y[lo : lo + n])
            lo += n
        return out

    def gram_times(self, P: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """c1^T (c1 P) [width + 1, d] (float64) for P [width + 1, d] (the last row: the bias's),
        the products over the nonzeros in `dtype`: float64, or float32 (2-3x faster, memory
        bound; each entry then within about 1e-7 of the float64 one, relative to |c| |c| |P|)."""
        W, b = P[:-1].to(dtype).contiguous(), P[-1].to(dtype).contiguous()
        out = torch.zeros(P.shape, dtype=torch.float64, device=P.device)
        if self._merged() is not None:
            self._all.gram_times(W, b, out)
            return dist.all_sum_(out) if self.reduce else out
        for chunk in self.chunks:
            y = chunk.times(W, b)
            out[:-1] += chunk.t_times(y)
            out[-1] += y.sum(0, dtype=torch.float64)
        return dist.all_sum_(out)


# Iterations whose decreases of the objective estimate its remaining gap (Strakos and Tichy's
# lower bound on the A-norm error, the sum of the next `WINDOW` decreases; here the last ones).
WINDOW = 20
# With inexact products a round checks its TRUE residual every CHECK iterations and ends where it
# grew (the products too coarse to go on; the next round takes float64 ones).
CHECK = 50


def solve_cg(
    codes: SparseCodes,
    rhs: torch.Tensor,
    diag: torch.Tensor,
    reg: torch.Tensor,
    x0: torch.Tensor,
    *,
    tol: float = 1e-8,
    max_iter: int = 500,
    products: torch.dtype = torch.float32,
    progress: Callable[[int, float], None] | None = None,
    inplace: bool = False,
    mse_tol: float | None = None,
    constant: float | None = None,
) -> tuple[torch.Tensor, CGReport]:
    """Solve (c1^T c1 + diag(reg)) X = rhs for X [width + 1, d] (float64) from x0, Jacobi
    preconditioned by diag (A's diagonal) + reg. progress(iteration, residual) after each.

    The iterations take the Gram's products in `products` (float32 by default: the pass over the
    nonzeros is memory bound, 2-3x faster than float64), the vectors and step sizes in float64.
    Convergence is judged on the TRUE residual, rhs - (A + reg) X with float64 products, at the
    end of each round: a round that met tol on its own running residual but not on the true one
    restarts from X with the true residual (iterative refinement); once a round fails to halve
    the true residual (float32's products are as far as it goes), the rounds that follow take
    float64 products. So the answer's residual is float64's whatever `products` is.
    mse_tol (with `constant`, the objective's constant term: sum |x|^2 + sum reg |target|^2):
    also stop once the objective (the squared error plus the ridge term: n x MSE at the
    solution) fell by at most mse_tol of itself over the last WINDOW iterations, which
    estimates its remaining gap to the minimum; the least-squares MSE is then reached to about
    mse_tol, long before every column's residual is small where features are nearly collinear.
    inplace: X is x0 itself (one [width + 1, d] block fewer). Memory: X, R, P, A P and rhs, plus
    one product's temporaries (the codes' [n, d] image and a float32 copy of P)."""
    exact = torch.float64
    X = x0 if inplace else x0.clone()
    R = rhs - _apply(codes, reg, X, exact)
    norm_b = rhs.norm(dim=0).clamp_min(1e-300)
    it, dtype = 0, products
    last = float((R.norm(dim=0) / norm_b).max())
    watch = mse_tol is not None and constant is not None
    while True:
        phi = constant - float((X * rhs).sum()) - float((X * R).sum()) if watch else None
        true = None if dtype == exact else (lambda X: rhs - _apply(codes, reg, X, exact))  # noqa: E731
        X, it, gap = _cg_round(codes, reg, diag, X, R, norm_b, tol, max_iter, it, dtype, progress,
                               phi, mse_tol, true)  # fmt: skip
        R = rhs - _apply(codes, reg, X, exact)
        res = float((R.norm(dim=0) / norm_b).max())
        if res <= tol or gap is not None or it >= max_iter:
            done = res <= tol or gap is not None
            reason = "residual" if res <= tol else "objective"
            return X, CGReport(it, res, done, str(dtype).replace("torch.", ""), reason,
                               gap if gap is not None else float("nan"))  # fmt: skip
        if res > last / 2:
            dtype = exact
        last = min(res, last)


def _apply(codes: SparseCodes, reg: torch.Tensor, P: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = codes.gram_times(P, dtype)
    return out.addcmul_(reg[:, None], P)


_ROWS = 1 << 14  # rows of a [width + 1, d] block per step of the column-wise helpers below


def _coldot(a: torch.Tensor, b: torch.Tensor, div: torch.Tensor | None = None) -> torch.Tensor:
    """Column-wise sum of a * b (or a * b / div, div [rows, 1]) [d], without a whole-block temporary."""
    out = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    for lo in range(0, a.shape[0], _ROWS):
        t = a[lo : lo + _ROWS] * b[lo : lo + _ROWS]
        out += (t if div is None else t.div_(div[lo : lo + _ROWS])).sum(0)
    return out


def _cg_round(codes, reg, diag, X, R, norm_b, tol, max_iter, it, dtype, progress, phi=None, mse_tol=None,
              true=None):  # fmt: skip
    """Preconditioned CG from X with residual R (updated in place) until R's relative norm is at
    most tol, or `max_iter` iterations in all, or (phi: the objective at X) the last WINDOW
    decreases of the objective sum to at most mse_tol of it, or (true: X -> the true residual,
    for inexact products) the true residual checked every CHECK iterations grew: (X, iterations
    so far, the relative sum where it stopped the round, else None). Blocks held: X, R, P and A P
    (z = R / M is never stored)."""
    M = (diag + reg).clamp_min(1e-30)[:, None]
    P = R / M
    rz = _coldot(R, R, M)
    res = checked = float((_coldot(R, R).sqrt() / norm_b).max())
    drops: list[float] = []
    start = it
    while res > tol and it < max_iter:
        AP = _apply(codes, reg, P, dtype)
        pap = _coldot(P, AP)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(rz))
        X.addcmul_(P, alpha)
        R.addcmul_(AP, alpha, value=-1)
        del AP
        it += 1
        res = float((_coldot(R, R).sqrt() / norm_b).max())
        if true is not None and (it - start) % CHECK == 0:
            now = float((true(X).norm(dim=0) / norm_b).max())
            if now > checked:
                return X, it, None
            checked = now
        if progress is not None:
            progress(it, res)
        if phi is not None:  # each step lowers the objective by alpha r.z, column by column
            drop = float((alpha * rz).sum())
            phi -= drop
            drops = (drops + [drop])[-WINDOW:]
            if len(drops) == WINDOW and sum(drops) <= mse_tol * max(phi, 1e-300):
                return X, it, sum(drops) / max(phi, 1e-300)
        rz_new = _coldot(R, R, M)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        for lo in range(0, P.shape[0], _ROWS):  # P = R / M + beta P, in place
            P[lo : lo + _ROWS].mul_(beta).addcdiv_(R[lo : lo + _ROWS], M[lo : lo + _ROWS])
        rz = rz_new
    return X, it, None
