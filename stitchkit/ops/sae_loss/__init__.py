"""The training loss of the reference work's ReLU SAE, forward and backward on sparse codes.

    relu_sae_loss(x [n, d], W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], l1_coefficient,
                  apply_b_dec_to_input=True) -> (mse, l1, l0) scalars
        mse = mean_t |x_hat_t - x_t|^2, l1 = l1_coefficient * mean_t sum_j f_tj,
        l0 = mean_t #(f_t > 0) (no gradient), f = ReLU((x - b_dec) W_enc + b_enc), x_hat = b_dec + f W_dec.

`ReluSAELoss` (triton.py, an autograd.Function) runs the fused encode (ops.encode) and the sparse
decode, and in backward touches only the active codes:
    g      = 2 (x_hat - x) / n * dmse                      [n, d]
    dW_dec = F^T g                                          sparse_decoder_grad
    dpre   = (g W_dec^T + l1_coefficient / n * dl1) at the active codes only (ReLU' = 0 elsewhere)
    dW_enc = (x - b_dec)^T dPre                             sparse_decoder_grad, transposed
    db_enc = column sums of dPre;  db_dec = sum_t g - W_enc db_enc when b_dec shifts the input.
The only dense work is the encoder GEMM in the fused encode. `relu_sae_loss_reference`
(naive.py) is the same loss in plain torch (autograd gives its gradients); the tests compare them.

`relu_sae_loss_cpu` (cpu.py, `ReluSAELossCPU`, what SAE.loss runs on the CPU route) has the same
backward without Triton: the encoder GEMM dense, then the rest on f's nonzeros
(ops.codes.cpu.nonzeros_cpu) where f is sparse, or as dense products where it is not.
"""

from .cpu import relu_sae_loss_cpu
from .naive import relu_sae_loss_reference

__all__ = ["relu_sae_loss_cpu", "relu_sae_loss_reference"]
