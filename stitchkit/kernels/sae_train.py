"""The training loss of the reference work's ReLU SAE, forward and backward on sparse codes.

    relu_sae_loss(x [n, d], W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], l1_coefficient,
                  apply_b_dec_to_input=True) -> (mse, l1, l0) scalars
        mse = mean_t |x_hat_t - x_t|^2, l1 = l1_coefficient * mean_t sum_j f_tj,
        l0 = mean_t #(f_t > 0) (no gradient), f = ReLU((x - b_dec) W_enc + b_enc), x_hat = b_dec + f W_dec.

`ReluSAELoss` (an autograd.Function) runs the fused encode (kernels.sae_forward) and the sparse
decode, and in backward touches only the active codes:
    g      = 2 (x_hat - x) / n * dmse                      [n, d]
    dW_dec = F^T g                                          sparse_decoder_grad
    dpre   = (g W_dec^T + l1_coefficient / n * dl1) at the active codes only (ReLU' = 0 elsewhere)
    dW_enc = (x - b_dec)^T dPre                             sparse_decoder_grad, transposed
    db_enc = column sums of dPre;  db_dec = sum_t g - W_enc db_enc when b_dec shifts the input.
The only dense work is the encoder GEMM in the fused encode. `relu_sae_loss_reference` is the same
loss in plain torch (autograd gives its gradients); the tests compare the two.

`relu_sae_loss_cpu` (`ReluSAELossCPU`, what SAE.loss runs on the CPU) has the same backward without
Triton: the encoder GEMM dense, then the rest on f's nonzeros (sparse_codes.nonzeros_cpu) where f
is sparse, or as dense products where it is not.
"""

from __future__ import annotations

import warnings

import torch

from .sae_forward import encode_sparse_triton
from .sparse_codes import (
    decode_nonzeros,
    nonzeros_cpu,
    sparse_decode,
    sparse_decoder_grad,
    sparse_rowdot,
    sparse_t_matmul,
)


def relu_sae_loss_reference(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input=True):
    """Plain torch: (mse, l1, l0) with autograd through mse and l1."""
    xin = x - b_dec if apply_b_dec_to_input else x
    f = torch.relu(xin @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    mse = (x_hat - x).pow(2).sum(1).mean()
    l1 = l1_coefficient * f.sum(1).mean()
    return mse, l1, (f > 0).float().sum(1).mean().detach()


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


class ReluSAELossCPU(torch.autograd.Function):
    """relu_sae_loss on the CPU (see relu_sae_loss_cpu). Outputs (mse, l1, l0, fired [F] bool)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input: bool):
        xin = (x - b_dec) if apply_b_dec_to_input else x
        f = torch.relu_(torch.addmm(b_enc, xin, W_enc))
        n = max(x.shape[0], 1)
        nz = nonzeros_cpu(f)
        if nz is None:  # dense: products
            active = f > 0
            x_hat, l1_sum, l0_sum, fired = torch.addmm(b_dec, f, W_dec), f.sum(), active.sum(), active.any(0)
            saved = (xin, f, W_enc, W_dec)
        else:  # sparse: f's nonzeros only (and their row starts, for CSR)
            x_hat, l1_sum, l0_sum = decode_nonzeros(nz, W_dec, b_dec), nz.values.sum(), len(nz.values)
            fired = torch.bincount(nz.cols, minlength=W_dec.shape[0]) > 0
            crow = torch.cat([nz.starts, torch.tensor([len(nz.cols)])])
            saved = (xin, crow, nz.rows, nz.cols, nz.values, W_enc, W_dec)
        ctx.sparse, ctx.l1_coefficient, ctx.shift_input = nz is not None, l1_coefficient, apply_b_dec_to_input
        err = x_hat - x
        ctx.save_for_backward(err, *saved)
        l0 = torch.as_tensor(l0_sum, dtype=x.dtype) / n
        ctx.mark_non_differentiable(l0, fired)
        return err.pow(2).sum() / n, l1_coefficient * l1_sum / n, l0, fired

    @staticmethod
    def backward(ctx, d_mse, d_l1, d_l0, d_fired):
        err, *saved = ctx.saved_tensors
        F = saved[-1].shape[0]
        n = max(err.shape[0], 1)
        g = err * (2.0 / n) * d_mse  # d loss / d x_hat, [n, d]
        dl1 = ctx.l1_coefficient / n * d_l1  # d loss / d f_tj at every active (t, j)
        if ctx.sparse:
            xin, crow, rows, cols, values, W_enc, W_dec = saved
            shape = (err.shape[0], F)
            # (g W_dec^T) at f's nonzeros only: a sampled product, not the dense [n, F] one.
            with warnings.catch_warnings():  # torch marks its CSR support as beta
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                pattern = torch.sparse_csr_tensor(
                    crow, cols, torch.zeros_like(values), shape, check_invariants=False
                )
            dpre = torch.sparse.sampled_addmm(pattern, g, W_dec.t(), beta=0.0).values() + dl1
            dW_dec = sparse_t_matmul(rows, cols, values, shape, g)
            dW_enc = sparse_t_matmul(rows, cols, dpre, shape, xin).t() if ctx.needs_input_grad[1] else None
            db_enc = torch.zeros(F, dtype=g.dtype).index_add_(0, cols, dpre)
        else:
            xin, f, W_enc, W_dec = saved
            dW_dec = f.t() @ g
            # ReLU's backward (autograd's own op for it): the gradient where f > 0, else 0.
            dpre = torch.ops.aten.threshold_backward(torch.addmm(dl1, g, W_dec.t()), f, 0)
            dW_enc = xin.t() @ dpre if ctx.needs_input_grad[1] else None  # None: a frozen encoder
            db_enc = dpre.sum(0)
        db_dec = g.sum(0)
        if ctx.shift_input:  # sum_t dPre_t W_enc^T = W_enc (column sums of dPre) = W_enc db_enc
            db_dec = db_dec - W_enc @ db_enc
        return None, dW_enc, db_enc, dW_dec, db_dec, None, None


def relu_sae_loss_cpu(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input=True):
    """relu_sae_loss on CPU tensors: (mse, l1, l0, fired [F], which features were active). The
    encoder product is dense; where f is sparse (sparse_codes.nonzeros_cpu) the decode, its
    gradient and the encoder's gradient use f's nonzeros alone (a sampled product for g W_dec^T at
    them, sparse products for F^T g and dPre^T (x - b_dec)); where it is dense, the same formulas
    as dense products. Either way the gradient that reaches b_dec through x - b_dec is W_enc db_enc,
    where autograd forms dPre W_enc^T. x carries no gradient."""
    return ReluSAELossCPU.apply(
        x.detach(), W_enc, b_enc, W_dec, b_dec, float(l1_coefficient), apply_b_dec_to_input
    )


class SparseDecode(torch.autograd.Function):
    """x_hat = b_dec + F W_dec for sparse codes F (idx, val), differentiable in W_dec and b_dec."""

    @staticmethod
    def forward(ctx, idx, val, W_dec, b_dec):
        ctx.save_for_backward(idx, val)
        ctx.d_sae = W_dec.shape[0]
        return sparse_decode(idx, val, W_dec, b_dec)[0]

    @staticmethod
    def backward(ctx, g):
        idx, val = ctx.saved_tensors
        return None, None, sparse_decoder_grad(idx, val, g.float(), ctx.d_sae), g.sum(0)


def relu_sae_loss(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input: bool = True):
    """The fused loss (see module doc); x carries no gradient."""
    return ReluSAELoss.apply(
        x.detach(), W_enc, b_enc, W_dec, b_dec, float(l1_coefficient), apply_b_dec_to_input
    )
