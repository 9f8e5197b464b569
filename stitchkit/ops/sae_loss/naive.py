"""The relu SAE training loss in plain torch: the reference the kernels are tested against."""

from __future__ import annotations

import torch


def relu_sae_loss_reference(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, apply_b_dec_to_input=True):
    """Plain torch: (mse, l1, l0) with autograd through mse and l1."""
    xin = x - b_dec if apply_b_dec_to_input else x
    f = torch.relu(xin @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    mse = (x_hat - x).pow(2).sum(1).mean()
    l1 = l1_coefficient * f.sum(1).mean()
    return mse, l1, (f > 0).float().sum(1).mean().detach()
