"""The optimiser every fit uses: Adam, with torch's fused kernel where it has one for the tensors
(13 vs 1.6 ms a step for a 6,144 x 384 SAE's parameters on the 2-core CPU; the per-tensor loop
otherwise). It is the same update, rounded in another order."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def fresh_casts(device: torch.device) -> None:
    """After an optimiser step inside torch.autocast: drop autocast's cached bf16/fp16 copies of
    the weights. Autocast keeps them until its outermost block exits, so a training loop run
    inside one block would otherwise compute every step from the first step's weights."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        torch.clear_autocast_cache()
