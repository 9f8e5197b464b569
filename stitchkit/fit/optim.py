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
