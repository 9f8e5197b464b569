"""The relu SAE training loss on the CPU route: the encode (from the bf16 screen where the CPU has
bf16 units, ops.encode.cpu; else a dense fp32 product), then the decode and the whole backward on
the nonzeros of f (see stitchkit.ops.sae_loss)."""

from __future__ import annotations

import warnings

import torch

from ..codes.cpu import FeatureMajor, decode_nonzeros, nonzeros_cpu
from ..dispatch import cpu_screen
from ..encode.cpu import screened_codes_cpu


class ReluSAELossCPU(torch.autograd.Function):
    """relu_sae_loss on the CPU (see relu_sae_loss_cpu). Outputs (mse, l1, l0, fired [F] bool)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input: bool):
        xin = (x - b_dec) if apply_b_dec_to_input else x
        n = max(x.shape[0], 1)
        # The encode from the bf16 screen where the CPU has bf16 units (exact fp32 features, no
        # dense [n, F] product); else, or where too many features are candidates, the dense one.
        nz = screened_codes_cpu(xin, W_enc, b_enc) if cpu_screen(x.device, x.dtype) else None
        if nz is None:
            f = torch.relu_(torch.addmm(b_enc, xin, W_enc))
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
            pattern = FeatureMajor(rows, cols, F)  # one regrouping for both products
            dW_dec = pattern.t_matmul(values, g)
            dW_enc = pattern.t_matmul(dpre, xin).t() if ctx.needs_input_grad[1] else None
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
    encode is the CPU screen's exact fp32 one where it applies (ops.dispatch.cpu_screen), else a
    dense product; where f is sparse (ops.codes.cpu.nonzeros_cpu) the decode, its
    gradient and the encoder's gradient use f's nonzeros alone (a sampled product for g W_dec^T at
    them, sparse products for F^T g and dPre^T (x - b_dec)); where it is dense, the same formulas
    as dense products. Either way the gradient that reaches b_dec through x - b_dec is W_enc db_enc,
    where autograd forms dPre W_enc^T. x carries no gradient."""
    return ReluSAELossCPU.apply(
        x.detach(), W_enc, b_enc, W_dec, b_dec, float(l1_coefficient), apply_b_dec_to_input
    )
