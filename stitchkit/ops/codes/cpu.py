"""CPU fast paths of the sparse-code operations, and the nonzeros of dense features.

nonzeros_cpu(f [..., F]) -> Nonzeros (rows, cols, values [nnz]; starts [n]) or None where f
    is too dense for its nonzeros to pay (DENSE_DECODE_MAX_DENSITY)
decode_nonzeros(nz, W_dec, b_dec) -> b_dec + f W_dec [n, d] (embedding_bag; differentiable)
decode_via_nonzeros(f, W_dec, b_dec) -> the same from dense f, or None where f is too dense
sparse_decode_cpu(idx, val, W_dec, b_dec, x=None): ops.codes.sparse_decode by embedding_bag
coo_t_matmul(rows, cols, values, shape, m) -> A^T m for A [n, F] given by its nonzeros
slots_to_coo(idx, val) -> (rows, cols, values) of slot codes, for coo_t_matmul
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


def coo_t_matmul(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], m: torch.Tensor
) -> torch.Tensor:
    """A^T m [F, d] for A [n, F] given by its nonzeros (rows, cols, values; repeated entries add up)
    and m [n, d]: torch.sparse.mm on the coalesced COO matrix A^T."""
    a_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, shape[::-1], check_invariants=False)
    return torch.sparse.mm(a_t.coalesce(), m)


def slots_to_coo(idx: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slot codes (idx [n, k], -1 empty; val [n, k]) as COO nonzeros (rows, cols int64, fp32 values)."""
    n, k = idx.shape
    ok = idx >= 0
    rows = torch.arange(n, device=idx.device)[:, None].expand(n, k)[ok]
    return rows, idx[ok].long(), val[ok].float()
