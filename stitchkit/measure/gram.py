"""The quadratic form of inserting any subset of donor features into a base SAE (one pass): what
greedy selection optimises exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..sae.model import SAE, check_same_input, feature_index
from .accumulator import Batch, Sums, check_tokens, measure


@dataclass
class MarginalGram:
    """The quadratic form of inserting any subset S of m donor features into a base SAE:
    MSE(S) = base_mse - 2 sum_{j in S} linear_j + sum_{i, j in S} gram_ij.

    linear: float64 [m], E[f_j (r . w_j)];  gram: float64 [m, m], E[f_i f_j] (w_i . w_j);
    base_mse: the base SAE's MSE; features: int64 [m] donor indices. Marginal dMSE_j given S
    already inserted: gram_jj - 2 (linear_j - sum_{i in S} gram_ij).
    """

    features: torch.Tensor
    linear: torch.Tensor
    gram: torch.Tensor
    base_mse: float
    n_tokens: int

    def mse_of(self, order: torch.Tensor) -> torch.Tensor:
        """MSE after inserting the first k of `order` (positions into `features`), k = 0..len:
        float64 [len + 1]."""
        order = torch.as_tensor(order, dtype=torch.int64)
        g = self.gram[order][:, order]
        # Each new feature j adds g_jj + 2 sum_{i before j} g_ij - 2 linear_j.
        step = g.diagonal() + 2 * torch.tril(g, -1).sum(1) - 2 * self.linear[order]
        return self.base_mse + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(step, 0)])


# Peak bytes per entry of the [m, m] Gram: the float64 accumulator, the decoder products, the
# scaled result and its copy on the host (4 float64 matrices).
GRAM_BYTES = 32


def gram_bytes(m: int) -> int:
    """Peak bytes of a MarginalGram over m candidates (GramAccumulator and result)."""
    return GRAM_BYTES * m * m


class GramAccumulator(Sums):
    """marginal_gram's one-pass form. Memory gram_bytes(m): 32 m^2 bytes (float64)."""

    summed = ("lin", "co", "sq")

    def __init__(self, base: SAE, donor: SAE, features=None):
        check_same_input(base, donor, "marginal_gram")
        self.base, self.donor = base, donor
        self.idx = feature_index(donor, features, "marginal_gram")
        dev = base.device
        self.w = donor.W_dec.detach()[self.idx].to(dev, base.dtype)
        self.lin = torch.zeros(len(self.idx), dtype=torch.float64, device=dev)
        self.co = torch.zeros(len(self.idx), len(self.idx), dtype=torch.float64, device=dev)
        self.sq = 0.0
        self.width = len(self.idx)
        self.reads = [(base, None), (donor, self.idx)]

    def update(self, batch: Batch) -> None:
        r = batch.residual(self.base)
        f = batch.columns(self.donor, self.idx, self.base)
        self.lin += (f * (r @ self.w.T)).double().sum(0)
        self.co += (f.T @ f).double()
        self.sq += r.double().pow(2).sum().item()
        self.n += batch.x.shape[0]

    def result(self) -> MarginalGram:
        check_tokens(self.n, self.base, "marginal_gram")
        gram = self.co / self.n * (self.w @ self.w.T).double()
        return MarginalGram(self.idx.cpu(), (self.lin / self.n).cpu(), gram.cpu(), self.sq / self.n, self.n)


def marginal_gram(base: SAE, donor: SAE, acts: ActsLike, features=None) -> MarginalGram:
    """Accumulate the MarginalGram of `donor`'s `features` over `acts` in one pass.
    Memory O(m^2) (float64): for up to ~20k candidates."""
    return measure(GramAccumulator(base, donor, features), acts, base)
