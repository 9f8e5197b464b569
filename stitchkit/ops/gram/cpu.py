"""The numba kernels of the sparse grams (see stitchkit.ops.gram): CSR by token and by feature,
products over nonzeros only, float64 accumulation."""

from __future__ import annotations

import torch

from ..numba_jit import load

# On the 2-core CPU (bench/test_kernels_cpu.py "gram", results/cpu_gram_pytest.json), adding
# f^T f into a float64 matrix for 4,096 tokens x 10,811 features at L0 220 took 4.47 s as an
# fp32 GEMM (9.3 ps per product, the float64 add included) and 0.254 s here (1.3 ns per nonzero
# product of the full f^T f, the CSR forms included): break-even at about 1 in 137.
DENSE_PRODUCTS_PER_SPARSE = 128


def gram_is_sparse_enough(f: torch.Tensor, g: torch.Tensor | None = None) -> bool:
    """True when f and g have few enough nonzero products for gram_cpu to beat a dense GEMM."""
    lf = (f != 0).sum(1).double()
    lg = lf if g is None else (g != 0).sum(1).double()
    width = f.shape[1] if g is None else g.shape[1]
    return float((lf * lg).sum()) * DENSE_PRODUCTS_PER_SPARSE < f.shape[0] * f.shape[1] * width


class SparseRows:
    """f [n, F] (CPU, mostly zeros) as CSR by token and by feature; see the module doc."""

    def __init__(self, f: torch.Tensor):
        if f.device.type != "cpu":
            raise ValueError(f"SparseRows: f must be a CPU tensor, got one on {f.device}")
        self.n, self.width = f.shape
        rows, self.crow, self.col, self.val = _csr(f)
        # By feature: the one stable counting sort of ops.codes (tokens ascending in each feature).
        crow_t, tok_t, perm = load("codes.kernels_cpu").by_feature(rows, self.col, self.width)
        self.by_feature = (crow_t, tok_t, self.val[perm])

    def gram_into(self, out: torch.Tensor, other: SparseRows | None = None) -> torch.Tensor:
        g = self if other is None else other
        _check_tokens(g.n, self.n, "gram_into", "other")
        _check_out(out, (self.width, g.width), "gram_into")
        _kernels().gram(*self.by_feature, g.crow, g.col, g.val, out.numpy(), other is None)
        return out

    def t_dense_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        _check_tokens(x.shape[0], self.n, "t_dense_into", "x")
        _check_out(out, (self.width, x.shape[1]), "t_dense_into")
        _kernels().dense(*self.by_feature, x.float().contiguous().numpy(), out.numpy())
        return out

    def colsum(self) -> torch.Tensor:
        out = torch.zeros(self.width, dtype=torch.float64)
        return out.index_add_(0, torch.from_numpy(self.col), torch.from_numpy(self.val).double())


def gram_cpu(f: torch.Tensor, g: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """out [Ff, Fg] float64 (CPU; zeros when None) += f^T g over the nonzero products of f [n, Ff]
    and g [n, Fg]. With g None: the upper triangle of f^T f only (see symmetrize_)."""
    width = f.shape[1] if g is None else g.shape[1]
    out = torch.zeros(f.shape[1], width, dtype=torch.float64) if out is None else out
    return SparseRows(f).gram_into(out, None if g is None else SparseRows(g))


def _check_tokens(n: int, expected: int, fn: str, what: str) -> None:
    # The kernels index by token without bounds checks: a mismatch would read past the arrays.
    if n != expected:
        raise ValueError(f"SparseRows.{fn}: {what} has {n} tokens, expected {expected} (f's)")


def _check_out(out: torch.Tensor, shape: tuple[int, int], fn: str) -> None:
    if out.dtype != torch.float64 or out.device.type != "cpu" or tuple(out.shape) != shape:
        raise ValueError(
            f"SparseRows.{fn}: out must be a float64 CPU tensor {list(shape)}, got {out.dtype} "
            f"{list(out.shape)} on {out.device}"
        )


def symmetrize_(a: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Copies a's upper triangle onto its lower one, in place, a block of rows at a time (no
    second [m, m] matrix: at m = 10,811 in float64 one is 0.9 GB)."""
    for r0 in range(0, a.shape[0], block):
        r1 = min(r0 + block, a.shape[0])
        d = a[r0:r1, r0:r1]
        d.copy_(torch.triu(d) + torch.triu(d, 1).T)
        a[r1:, r0:r1] = a[r0:r1, r1:].T
    return a


def _csr(f: torch.Tensor):
    """f's nonzeros as numpy arrays: each one's row, then CSR (row offsets, columns, fp32 values),
    row-major with columns ascending."""
    rows, cols = f.nonzero(as_tuple=True)  # row-major order
    crow = torch.zeros(f.shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=f.shape[0]).cumsum(0)
    return rows.numpy(), crow.numpy(), cols.numpy(), f[rows, cols].float().numpy()


def _kernels():
    """The numba kernels (kernels_cpu.py), compiled once and loaded on first use."""
    return load("gram.kernels_cpu")
