"""The least-squares decoder refit at any width: conjugate gradients on the normal equations with
the Gram matrix left implicit, so no [d_sae, d_sae] matrix is ever formed.

The refit solves (A + diag(reg)) [W; b] = B + diag(reg) [W_old; 0], A = c1^T c1, B = c1^T x over
the codes c1 = [c, 1] of the retraining tokens (measure.normal's quantities). A product A P is
c1^T (c1 P): two sparse products over the codes' nonzeros, which are kept from one pass over the
tokens. Memory: about 40 bytes per nonzero (n x L0) plus a few [d_sae, d_in] float64 blocks,
against 32 bytes per entry of [d_sae, d_sae] for the dense solve (retrain._DENSE_BYTES); time:
4 n L0 d_in flops an iteration. Each of the d_in right-hand sides is its own CG (its own step
sizes), all sharing each product; Jacobi preconditioning (diag of A) and a warm start at the old
decoder. It stops when every column's residual is below `tol` relative to its right-hand side,
so the answer is the dense solve's within about tol x the system's condition number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import dist
from ..ops.dispatch import numba_installed


@dataclass
class CGReport:
    """How the solve ended: iterations taken, the largest relative residual, whether it met tol."""

    iterations: int
    residual: float
    converged: bool

    def describe(self) -> str:
        state = "converged" if self.converged else "stopped at max_iter"
        return (
            f"conjugate gradients, implicit Gram: {self.iterations} iterations, "
            f"residual {self.residual:.1e} ({state})"
        )


class _NonzeroChunk:
    """One chunk's codes as their nonzeros, with numba's products (ops.codes.cpu)."""

    def __init__(self, f: torch.Tensor, width: int):
        from ..ops.codes.cpu import FeatureMajor, nonzeros_cpu

        self.nz = nonzeros_cpu(f, max_density=1.0)  # never None for a non-empty f
        self.by_feature = FeatureMajor(self.nz.rows, self.nz.cols, width)
        self.nnz = len(self.nz.values)

    def times(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from ..ops.codes.cpu import decode_nonzeros

        return decode_nonzeros(self.nz, W, b)

    def t_times(self, y: torch.Tensor) -> torch.Tensor:
        return self.by_feature.t_matmul(self.nz.values, y)

    def sq_sums(self, width: int) -> torch.Tensor:
        return torch.bincount(self.nz.cols, weights=self.nz.values.pow(2), minlength=width)


class _CsrChunk:
    """One chunk's codes as torch CSR matrices (and their transpose), for other devices."""

    def __init__(self, f: torch.Tensor, width: int):
        self.csr, self.csr_t = f.to_sparse_csr(), f.t().contiguous().to_sparse_csr()
        self.nnz = self.csr._nnz()

    def times(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.csr @ W + b

    def t_times(self, y: torch.Tensor) -> torch.Tensor:
        return self.csr_t @ y

    def sq_sums(self, width: int) -> torch.Tensor:
        cols, vals = self.csr.col_indices(), self.csr.values()
        return torch.bincount(cols, weights=vals.pow(2), minlength=width)


class SparseCodes:
    """The codes of the tokens this rank holds, chunk by chunk, for products c P and c^T Y."""

    def __init__(self, width: int, numba: bool | None = None):
        """numba: the CPU's numba products (None: where numba imports), else torch's CSR ones."""
        self.width = width
        self.numba = numba_installed() if numba is None else numba
        self.chunks: list[_NonzeroChunk | _CsrChunk] = []
        self.nnz = 0

    def add(self, f: torch.Tensor):
        """Keep one chunk's dense codes f [n, width] as their nonzeros (float64); returns the
        chunk, whose t_times(x) and sq_sums(width) give its share of c^T x and diag(c^T c)."""
        f = f.detach().double()
        kind = _NonzeroChunk if f.device.type == "cpu" and self.numba else _CsrChunk
        chunk = kind(f, self.width)
        self.chunks.append(chunk)
        self.nnz += chunk.nnz
        return chunk

    def gram_times(self, P: torch.Tensor) -> torch.Tensor:
        """c1^T (c1 P) [width + 1, d] for P [width + 1, d] (the last row: the bias's)."""
        W, b = P[:-1], P[-1]
        out = torch.zeros_like(P)
        for chunk in self.chunks:
            y = chunk.times(W, b)
            out[:-1] += chunk.t_times(y)
            out[-1] += y.sum(0)
        return dist.all_sum_(out)


def solve_cg(
    codes: SparseCodes,
    rhs: torch.Tensor,
    diag: torch.Tensor,
    reg: torch.Tensor,
    x0: torch.Tensor,
    *,
    tol: float = 1e-8,
    max_iter: int = 500,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, CGReport]:
    """Solve (c1^T c1 + diag(reg)) X = rhs for X [width + 1, d] (float64) from x0, Jacobi
    preconditioned by diag (A's diagonal) + reg. progress(iteration, residual) after each."""

    def apply(P: torch.Tensor) -> torch.Tensor:
        return codes.gram_times(P) + reg[:, None] * P

    M = (diag + reg).clamp_min(1e-30)[:, None]
    X = x0.clone()
    R = rhs - apply(X)
    norm_b = rhs.norm(dim=0).clamp_min(1e-300)
    Z = R / M
    P = Z.clone()
    rz = (R * Z).sum(0)
    res = float((R.norm(dim=0) / norm_b).max())
    it = 0
    while res > tol and it < max_iter:
        AP = apply(P)
        pap = (P * AP).sum(0)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(rz))
        X += alpha * P
        R -= alpha * AP
        it += 1
        res = float((R.norm(dim=0) / norm_b).max())
        if progress is not None:
            progress(it, res)
        Z = R / M
        rz_new = (R * Z).sum(0)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return X, CGReport(it, res, res <= tol)
