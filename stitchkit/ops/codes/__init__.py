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
    SparseDecode: sparse_decode as an autograd Function, differentiable in W_dec and b_dec.

Implementations: naive.py (torch references), cpu.py (embedding_bag and sparse products; also the
nonzeros of dense features), triton.py (kernels). Each dispatcher asks ops.dispatch.op_route.
"""

from __future__ import annotations

import torch

from .. import compiled
from ..dispatch import csrc_available, op_route
from .cpu import coo_t_matmul, slots_to_coo, sparse_decode_cpu
from .naive import (
    coactivation_reference,
    sparse_decode_reference,
    sparse_decoder_grad_reference,
    sparse_rowdot_reference,
)


def sparse_decode(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch (op_route of W_dec's device): the Triton kernel, embedding_bag, or the reference."""
    route = op_route(W_dec.device)
    if route == "triton":
        from .triton import sparse_decode_triton

        return sparse_decode_triton(idx, val, W_dec, b_dec, x)
    if route == "cpu":
        return sparse_decode_cpu(idx, val, W_dec, b_dec, x)
    return sparse_decode_reference(idx, val, W_dec, b_dec, x)


def sparse_decoder_grad(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int, method: str | None = None
) -> torch.Tensor:
    """Dispatch: on the Triton route `method` or triton.GRAD_METHOD ("sorted" / "atomics"; "cuda":
    the csrc extension's segmented reduction, where built); on the CPU route a sparse matrix
    product (coo_t_matmul); else the reference."""
    route = op_route(g.device)
    if route == "triton":
        from . import triton as kernels

        method = method or kernels.GRAD_METHOD
        if method == "cuda" and g.is_cuda and csrc_available():
            return compiled.sparse_decoder_grad_segmented(idx, val, g, d_sae)
        if method == "atomics":
            return kernels.sparse_decoder_grad_atomic(idx, val, g, d_sae)
        return kernels.sparse_decoder_grad_sorted(idx, val, g, d_sae)
    if route == "cpu":
        return coo_t_matmul(*slots_to_coo(idx, val), (idx.shape[0], d_sae), g.float())
    return sparse_decoder_grad_reference(idx, val, g, d_sae)


def sparse_rowdot(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Dispatch: Triton on its route, else the reference."""
    if op_route(g.device) == "triton":
        from .triton import sparse_rowdot_triton

        return sparse_rowdot_triton(idx, g, W)
    return sparse_rowdot_reference(idx, g, W)


def coactivation(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor, d_a: int, d_b: int
) -> torch.Tensor:
    """Dispatch: the csrc extension on CUDA where built, else the reference."""
    if idx_a.is_cuda and csrc_available():
        return compiled.coactivation(idx_a, val_a, idx_b, val_b, d_a, d_b)
    return coactivation_reference(idx_a, val_a, idx_b, val_b, d_a, d_b)


class SparseDecode(torch.autograd.Function):
    """x_hat = b_dec + F W_dec for sparse codes F (idx [n, k], val [n, k]), differentiable in
    W_dec [F, d] and b_dec [d]."""

    @staticmethod
    def forward(ctx, idx, val, W_dec, b_dec):
        ctx.save_for_backward(idx, val)
        ctx.d_sae = W_dec.shape[0]
        return sparse_decode(idx, val, W_dec, b_dec)[0]

    @staticmethod
    def backward(ctx, g):
        idx, val = ctx.saved_tensors
        return None, None, sparse_decoder_grad(idx, val, g.float(), ctx.d_sae), g.sum(0)
