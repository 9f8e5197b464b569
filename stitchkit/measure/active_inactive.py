"""Two SAEs' MSE on the tokens where each feature of the larger one is active vs inactive (one pass)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..sae.model import SAE, check_same_input, feature_index
from .accumulator import Batch, Sums, check_tokens, measure


@dataclass
class ActiveInactiveMSE:
    """Per feature j of `large` (m of them, float64 [m] each; NaN where there is no such token):
    MSE of each SAE on the tokens where j is active, and where it is inactive.

    n_active: int64 [m] tokens on which j fired. `.summary()` averages over the features with
    both active and inactive tokens.
    """

    features: torch.Tensor
    n_active: torch.Tensor
    n_tokens: int
    small_active: torch.Tensor
    large_active: torch.Tensor
    small_inactive: torch.Tensor
    large_inactive: torch.Tensor

    @property
    def gap_active(self) -> torch.Tensor:
        """large - small MSE on active tokens [m] (negative: the large SAE does better there)."""
        return self.large_active - self.small_active

    @property
    def gap_inactive(self) -> torch.Tensor:
        return self.large_inactive - self.small_inactive

    def summary(self) -> dict[str, float]:
        ok = (self.n_active > 0) & (self.n_active < self.n_tokens)
        mean = lambda t: float(t[ok].mean()) if ok.any() else float("nan")  # noqa: E731
        return dict(
            n_features=int(ok.sum()),
            small_active=mean(self.small_active),
            large_active=mean(self.large_active),
            small_inactive=mean(self.small_inactive),
            large_inactive=mean(self.large_inactive),
            gap_active=mean(self.gap_active),
            gap_inactive=mean(self.gap_inactive),
        )


class ActiveInactiveAccumulator(Sums):
    """active_inactive_mse's one-pass form."""

    summed = ("n_act", "s_act", "l_act", "s_tot", "l_tot")

    def __init__(self, small: SAE, large: SAE, features=None):
        check_same_input(small, large, "active_inactive_mse")
        self.small, self.large = small, large
        self.idx = feature_index(large, features, "active_inactive_mse")
        m, dev = len(self.idx), large.device
        self.n_act, self.s_act, self.l_act = (
            torch.zeros(m, dtype=torch.float64, device=dev) for _ in range(3)
        )
        self.s_tot = self.l_tot = 0.0
        self.width = m
        self.reads = [(small, None), (large, None), (large, self.idx)]

    def update(self, batch: Batch) -> None:
        dev = self.large.device
        x = batch.on(dev)
        e_s = (batch.reconstruction(self.small).to(dev) - x).double().pow(2).sum(1)
        e_l = (batch.reconstruction(self.large) - x).double().pow(2).sum(1)
        active = (batch.columns(self.large, self.idx, self.large) > 0).double()
        self.n_act += active.sum(0)
        self.s_act += e_s @ active
        self.l_act += e_l @ active
        self.s_tot += e_s.sum().item()
        self.l_tot += e_l.sum().item()
        self.n += x.shape[0]

    def result(self) -> ActiveInactiveMSE:
        n = self.n
        check_tokens(n, self.large, "active_inactive_mse")
        n_in = n - self.n_act
        div = lambda a, b: (a / b).masked_fill(b == 0, float("nan")).cpu()  # noqa: E731
        return ActiveInactiveMSE(
            features=self.idx.cpu(),
            n_active=self.n_act.long().cpu(),
            n_tokens=n,
            small_active=div(self.s_act, self.n_act),
            large_active=div(self.l_act, self.n_act),
            small_inactive=div(self.s_tot - self.s_act, n_in),
            large_inactive=div(self.l_tot - self.l_act, n_in),
        )


def active_inactive_mse(small: SAE, large: SAE, acts: ActsLike, features=None) -> ActiveInactiveMSE:
    """MSE of `small` and of `large` on the tokens where each feature of `large` (default: all;
    pass the novel ones to reproduce the reference work) is active vs inactive. One pass."""
    return measure(ActiveInactiveAccumulator(small, large, features), acts, large)
