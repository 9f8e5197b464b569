"""Streaming evaluation of an SAE over batches of activations (units: see stitchkit.sae)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .errors import InvalidArgumentError
from .sae import SAE


@dataclass
class Metrics:
    """Metrics of one SAE over a stream of tokens.

    mse:            squared error summed over d_in, mean over tokens.
    normalized_mse: mse / mean |x - mean(x)|^2 (fraction of variance unexplained).
    l0:             active features per token, mean over tokens.
    l1:             sum of features per token, mean over tokens (no coefficient).
    dead_fraction:  fraction of features that never fired on these tokens.
    frequency:      float64 [d_sae], fraction of tokens on which each feature fired.
    """

    n_tokens: int
    mse: float
    normalized_mse: float
    l0: float
    l1: float
    dead_fraction: float
    frequency: torch.Tensor


@torch.no_grad()
def evaluate(
    sae: SAE,
    batches: Iterable[torch.Tensor],
    *,
    progress: Callable[[int], None] | None = None,
) -> Metrics:
    """Stream `batches` ([n, d_in] each) through `sae` and return its Metrics.

    Sums are kept in float64, so the result does not depend on how tokens are batched beyond
    float32 rounding of each batch. `progress(n_tokens)` is called after every batch.
    """
    d_in = sae.d_in
    n = 0
    sq_err = l0 = l1 = sum_x2 = 0.0
    sum_x = torch.zeros(d_in, dtype=torch.float64, device=sae.device)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    for x in batches:
        sae._check_input(x, "activation batch")
        x = x.to(device=sae.device).reshape(-1, d_in)
        f = sae.encode(x)
        err = (sae.decode(f) - x.to(sae.dtype)).double()
        sq_err += err.pow(2).sum().item()
        active = f != 0
        l0 += active.sum().item()
        l1 += f.double().sum().item()
        fired += active.sum(0).double()
        xd = x.double()
        sum_x += xd.sum(0)
        sum_x2 += xd.pow(2).sum().item()
        n += x.shape[0]
        if progress is not None:
            progress(n)
    if n == 0:
        raise InvalidArgumentError(f"evaluate: the activation stream for SAE {sae.name!r} was empty")
    mean = sum_x / n
    variance = sum_x2 / n - mean.pow(2).sum().item()
    mse = sq_err / n
    return Metrics(
        n_tokens=n,
        mse=mse,
        normalized_mse=mse / variance if variance > 0 else float("nan"),
        l0=l0 / n,
        l1=l1 / n,
        dead_fraction=(fired == 0).double().mean().item() if sae.d_sae else 0.0,
        frequency=(fired / n).cpu(),
    )
