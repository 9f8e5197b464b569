"""Metrics of one SAE over a token stream: MSE, normalised MSE, L0, L1, dead features (units: see
stitchkit.sae.model). `MetricsAccumulator` is the one-pass form; `evaluate` runs it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..ops.dispatch import cpu_screen, sae_route
from ..sae.model import SAE
from .accumulator import Batch, Progress, Sums, check_tokens, measure


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


class Variance(Sums):
    """Streaming mean |x - mean(x)|^2 in float64 (the normalised-MSE denominator)."""

    summed = ("sum_x", "sum_x2")

    def __init__(self, d_in: int, device: torch.device):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_x2 = 0.0

    def add(self, x: torch.Tensor) -> None:
        xd = x.double()
        self.sum_x += xd.sum(0)
        self.sum_x2 += xd.pow(2).sum().item()
        self.n += x.shape[0]

    def value(self) -> float:
        mean = self.sum_x / self.n
        v = self.sum_x2 / self.n - mean.pow(2).sum().item()
        return v if v > 0 else float("nan")


class MetricsAccumulator(Sums):
    """evaluate's one-pass form. On the Triton route the fused forward (never the dense features);
    on the CPU route each statistic from f's nonzeros (from the CPU screen where it applies, also
    never the dense features); else dense passes over f."""

    summed = ("sq_err", "l0", "l1", "fired")

    def __init__(self, sae: SAE):
        self.sae = sae
        self.width = sae.d_sae
        self.var = Variance(sae.d_in, sae.device)
        self.sq_err = self.l0 = self.l1 = 0.0
        self.fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
        self.route = sae_route(sae.device, sae.dtype, eval_mode=not sae.training)
        # The fused forward and the CPU screen keep codes only; the dense forms keep f.
        screened = self.route == "cpu" and cpu_screen(sae.device, sae.dtype) and not sae.training
        self.reads = [] if self.route == "triton" or screened else [(sae, None)]

    def update(self, batch: Batch) -> None:
        sae = self.sae
        x = batch.on(sae.device)
        if self.route == "triton":  # never writes the dense [n, d_sae] features
            st = batch.sparse_forward(sae)
            self.sq_err += st.sq_err.double().sum().item()
            self.l0 += st.l0.double().sum().item()
            self.l1 += st.l1.double().sum().item()
            ok = st.indices >= 0
            self.fired += torch.bincount(st.indices[ok].long(), minlength=sae.d_sae).double()
        else:
            nz = batch.codes(sae) if self.route == "cpu" else None
            if nz is not None:  # each statistic from f's nonzeros, not from passes over all of f
                from ..ops.codes.cpu import decode_nonzeros

                x_hat = decode_nonzeros(nz, sae.W_dec, sae.b_dec)
                self.sq_err += (x_hat - x.to(sae.dtype)).double().pow(2).sum().item()
                self.l0 += len(nz.values)
                self.l1 += nz.values.double().sum().item()
                self.fired += torch.bincount(nz.cols, minlength=sae.d_sae).double()
            else:
                f = batch.features(sae)
                err = (sae.decode(f) - x.to(sae.dtype)).double()
                self.sq_err += err.pow(2).sum().item()
                active = f != 0
                self.l0 += active.sum().item()
                self.l1 += f.double().sum().item()
                self.fired += active.sum(0).double()
        self.var.add(x)
        self.n = self.var.n

    def merge(self, other: MetricsAccumulator) -> None:
        super().merge(other)
        self.var.merge(other.var)

    def result(self) -> Metrics:
        n, sae = self.var.n, self.sae
        check_tokens(n, sae, "evaluate")
        mse = self.sq_err / n
        return Metrics(
            n_tokens=n,
            mse=mse,
            normalized_mse=mse / self.var.value(),
            l0=self.l0 / n,
            l1=self.l1 / n,
            dead_fraction=(self.fired == 0).double().mean().item() if sae.d_sae else 0.0,
            frequency=(self.fired / n).cpu(),
        )


@torch.no_grad()
def evaluate(sae: SAE, acts: ActsLike, *, progress: Progress = None) -> Metrics:
    """Stream `acts` through `sae` and return its Metrics.

    Sums are kept in float64, so the result does not depend on how tokens are batched beyond
    float32 rounding of each batch. `progress(n_tokens)` is called after every batch.
    """
    return measure(MetricsAccumulator(sae), acts, sae, progress, what="activation batch")
