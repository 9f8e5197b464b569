"""The torch reference of the SAE evaluation forward (see stitchkit.ops.encode): dense
pre-activations and features, then the per-token statistics and the codes."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ForwardStats(NamedTuple):
    """Per token, fp32 [n]: sq_err = |x - x_hat|^2 (summed over d_in), l1 = sum f, l0 = #(f > 0).
    Codes: indices int32 [n, c] (ascending; -1 marks an empty slot), values fp32 [n, c]."""

    sq_err: torch.Tensor
    l1: torch.Tensor
    l0: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor


def _codes_from_dense(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features [n, F] -> (indices int32 [n, c] ascending with -1 padding, values [n, c])."""
    active = f > 0
    c = int(active.sum(1).max()) if f.numel() else 0
    # Sort active features first, each row in ascending feature order.
    key = torch.where(active, torch.arange(f.shape[1], device=f.device), f.shape[1])
    order = torch.sort(key, dim=1).values[:, :c]
    ok = order < f.shape[1]
    safe = order.clamp_max(max(f.shape[1] - 1, 0))
    values = torch.where(ok, f.gather(1, safe), torch.zeros((), dtype=f.dtype, device=f.device))
    return torch.where(ok, order, -1).to(torch.int32), values.float()


def sae_forward_reference(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
    apply_b_dec_to_input: bool = True,
    k: int | None = None,
) -> ForwardStats:
    """Plain torch: dense pre-activations and features, then the statistics and codes."""
    xin = x.to(W_enc.dtype)
    pre = (xin - b_dec if apply_b_dec_to_input else xin) @ W_enc + b_enc
    if k is not None:
        top = pre.topk(min(k, pre.shape[1]), dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    else:
        f = torch.relu(pre) if threshold is None else torch.relu(pre) * (pre > threshold)
    x_hat = f @ W_dec + b_dec
    sq_err = (x_hat.float() - x.float()).pow(2).sum(1)
    idx, val = _codes_from_dense(f)
    return ForwardStats(sq_err, f.float().sum(1), (f > 0).float().sum(1), idx, val)
