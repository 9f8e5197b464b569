"""The relu SAE training loss on the Triton route: fused encode, sparse decode, sparse backward
(see stitchkit.ops.sae_loss)."""

from __future__ import annotations

import torch

from ..codes import sparse_decode, sparse_decoder_grad, sparse_rowdot
from ..encode.triton import encode_sparse_triton


class ReluSAELoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input: bool):
        xin = (x - b_dec) if apply_b_dec_to_input else x
        idx, val, l1_tok, l0_tok = encode_sparse_triton(xin, W_enc, b_enc)
        x_hat, _ = sparse_decode(idx, val, W_dec, b_dec)
        err = x_hat - x.float()
        n = max(x.shape[0], 1)
        ctx.save_for_backward(xin, idx, val, err, W_enc, W_dec)
        ctx.l1_coefficient, ctx.shift_input = l1_coefficient, apply_b_dec_to_input
        l0 = l0_tok.sum() / n
        ctx.mark_non_differentiable(l0)
        return err.pow(2).sum() / n, l1_coefficient * l1_tok.sum() / n, l0

    @staticmethod
    def backward(ctx, d_mse, d_l1, d_l0):
        xin, idx, val, err, W_enc, W_dec = ctx.saved_tensors
        n = max(xin.shape[0], 1)
        F = W_dec.shape[0]
        g = err * (2.0 / n) * d_mse  # d loss / d x_hat, [n, d]
        active = idx >= 0
        dpre = sparse_rowdot(idx, g, W_dec) + ctx.l1_coefficient / n * d_l1
        dpre = torch.where(active, dpre, torch.zeros_like(dpre))
        dW_dec = sparse_decoder_grad(idx, val, g, F)
        dW_enc = sparse_decoder_grad(idx, dpre, xin.float(), F).t().contiguous()
        db_enc = torch.zeros(F, dtype=torch.float32, device=g.device)
        db_enc.index_add_(0, idx[active].long(), dpre[active])
        db_dec = g.sum(0)
        if ctx.shift_input:  # sum_t dPre_t W_enc^T = W_enc (column sums of dPre) = W_enc db_enc
            db_dec = db_dec - W_enc.float() @ db_enc
        cast = lambda t, like: t.to(like.dtype)  # noqa: E731
        return (
            None,
            cast(dW_enc, W_enc),
            cast(db_enc, W_enc),
            cast(dW_dec, W_dec),
            cast(db_dec, W_dec),
            None,
            None,
        )


def relu_sae_loss(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input: bool = True):
    """The fused loss (see module doc); x carries no gradient."""
    return ReluSAELoss.apply(
        x.detach(), W_enc, b_enc, W_dec, b_dec, float(l1_coefficient), apply_b_dec_to_input
    )
