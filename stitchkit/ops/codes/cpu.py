"""CPU fast paths of the sparse-code operations, and the nonzeros of dense features.

nonzeros_cpu(f [..., F]) -> Nonzeros (rows, cols, values [nnz]; starts [n]) or None where f
    is too dense for its nonzeros to pay (DENSE_DECODE_MAX_DENSITY)
decode_nonzeros(nz, W_dec, b_dec) -> b_dec + f W_dec [n, d] (embedding_bag; differentiable)
dense_from_nonzeros(nz, F) -> f [n, F]
decode_via_nonzeros(f, W_dec, b_dec) -> the same from dense f, or None where f is too dense
sparse_decode_cpu(idx, val, W_dec, b_dec, x=None): ops.codes.sparse_decode by embedding_bag
coo_t_matmul(rows, cols, values, shape, m) -> A^T m for A [n, F] given by its nonzeros
FeatureMajor(rows, cols, F): those nonzeros regrouped by feature once, for several A^T m
slots_to_coo(idx, val) -> (rows, cols, values) of slot codes, for coo_t_matmul
rowdots_cpu(rows, cols, g, W) -> g[rows] . W[cols] [nnz]: one dot product per nonzero
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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


# SAE.decode on the CPU takes decode_via_nonzeros up to this fraction of nonzero features. Its speed-up
# over the dense f @ W_dec on the 2-core CPU (n = 4,096; bench/results/cpu_decode_dense_pytest.json):
# 3.4x / 2.6x / 1.8x / 1.3x / 0.94x at 0.2 / 1 / 3 / 6 / 10% nonzero with d_sae 6,144, d_in 384, and
# 6.2x / 2.3x / 1.6x / 0.98x / 0.62x at 24,576 x 768. Typical SAEs (L0 50-300) are well below 3%.
DENSE_DECODE_MAX_DENSITY = 0.03


class Nonzeros(NamedTuple):
    """The nonzeros of dense features f [n, F], tokens in order and each one's features ascending:
    token rows, feature cols, values (f's dtype) [nnz]; starts [n], each token's first entry."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    starts: torch.Tensor


def nonzeros_cpu(f: torch.Tensor, max_density: float = DENSE_DECODE_MAX_DENSITY) -> Nonzeros | None:
    """f [..., F]'s nonzeros (leading dims flattened into tokens), or None where f is empty or more
    than `max_density` of it is nonzero (then dense products are faster)."""
    flat = f.reshape(-1, f.shape[-1])
    if flat.numel() == 0:
        return None
    if torch.count_nonzero(flat) > max_density * flat.numel():  # one pass, no index list
        return None
    nz = flat.nonzero()  # row-major: tokens in order, each one's features ascending
    rows, cols = nz.unbind(1)
    starts = torch.searchsorted(rows, torch.arange(flat.shape[0], device=f.device))
    return Nonzeros(rows, cols, flat[rows, cols], starts)


def dense_from_nonzeros(nz: Nonzeros, width: int) -> torch.Tensor:
    """The dense features [n, width] (nz.values' dtype) whose nonzeros nz holds (n = len(starts))."""
    f = torch.zeros(len(nz.starts), width, dtype=nz.values.dtype)
    f[nz.rows, nz.cols] = nz.values
    return f


def decode_nonzeros(nz: Nonzeros, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """b_dec + f W_dec [n, d] from f's nonzeros: each token's rows of W_dec gathered and weighted by
    embedding_bag. Differentiable in W_dec and b_dec (and nz.values)."""
    weights = nz.values.to(W_dec.dtype)
    return (
        torch.nn.functional.embedding_bag(nz.cols, W_dec, nz.starts, mode="sum", per_sample_weights=weights)
        + b_dec
    )


def decode_via_nonzeros(
    f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, max_density: float = DENSE_DECODE_MAX_DENSITY
) -> torch.Tensor | None:
    """b_dec + f W_dec for dense features f [..., F] through their nonzeros alone, or None where
    nonzeros_cpu declines f. Not differentiable at f's zeros: not for an f that needs its gradient."""
    nz = nonzeros_cpu(f, max_density)
    if nz is None:
        return None
    return decode_nonzeros(nz, W_dec, b_dec).reshape(*f.shape[:-1], W_dec.shape[1])


class FeatureMajor:
    """The nonzeros (rows, cols int64 [nnz]) of a matrix A [n, width], regrouped by feature once
    (kernels_cpu.by_feature), for any number of products A^T m with values on that pattern."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, width: int):
        from ..numba_jit import load

        self.kernels = load("codes.kernels_cpu")
        self.width = width
        crow, tok, perm = self.kernels.by_feature(
            rows.contiguous().numpy(), cols.contiguous().numpy(), int(width)
        )
        self.crow, self.tok, self.perm = (torch.from_numpy(a) for a in (crow, tok, perm))

    def t_matmul(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """A^T m [width, d] in m's dtype (fp32 or float64) for A's entries `values` [nnz] (in the
        order of the rows and cols given) and m [n, d]; repeated entries add up. Sums in m's dtype."""
        m = m.detach().contiguous()
        vals = values.detach().to(m.dtype)[self.perm]
        out = torch.empty(self.width, m.shape[1], dtype=m.dtype)
        self.kernels.t_matmul(self.crow.numpy(), self.tok.numpy(), vals.numpy(), m.numpy(), out.numpy())
        return out


def coo_t_matmul(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], m: torch.Tensor
) -> torch.Tensor:
    """A^T m [F, d] for A [n, F] given by its nonzeros (rows, cols, values; repeated entries add up)
    and m [n, d] (fp32 or float64): FeatureMajor's product, 6x torch.sparse.mm on the coalesced COO
    matrix at 4,096 x 6,144, L0 50 (bench/test_kernels_cpu.py "decoder_grad")."""
    return FeatureMajor(rows, cols, shape[1]).t_matmul(values, m)


def slots_to_coo(idx: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slot codes (idx [n, k], -1 empty; val [n, k]) as COO nonzeros (rows, cols int64, fp32 values)."""
    n, k = idx.shape
    ok = idx >= 0
    rows = torch.arange(n, device=idx.device)[:, None].expand(n, k)[ok]
    return rows, idx[ok].long(), val[ok].float()


def rowdots_cpu(rows: torch.Tensor, cols: torch.Tensor, g: torch.Tensor, W: torch.Tensor,
                block_bytes: int = 64 << 20) -> torch.Tensor:  # fmt: skip
    """g[rows[p]] . W[cols[p]] for every nonzero p (int64 [nnz] each; g [n, d], W [F, d]), in g's
    dtype: the entries of g W^T that a sparse f multiplies, without the dense [n, F] product.
    Gathers `block_bytes` of rows at a time."""
    out = torch.empty(len(rows), dtype=g.dtype)
    step = max(1, block_bytes // max(2 * g.shape[1] * g.element_size(), 1))
    for lo in range(0, len(rows), step):
        hi = min(len(rows), lo + step)
        out[lo:hi] = torch.einsum("ij,ij->i", g[rows[lo:hi]], W[cols[lo:hi]].to(g.dtype))
    return out
