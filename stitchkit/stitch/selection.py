"""Greedy exact-marginal selection of donor features against the cosine rule's selection: the
reference work's greedy cosine assembly, answered with the exact quadratic form of insertion."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..measure.gram import MarginalGram, marginal_gram
from ..sae.model import SAE, feature_index
from .rules import DEFAULT_THRESHOLD, check_threshold, is_novel
from .similarity import max_cosine


@dataclass
class Selection:
    """Greedy exact-marginal selection vs cosine-threshold selection of donor features.

    greedy: int64 [k] donor indices in pick order; greedy_mse: float64 [k + 1], MSE after each.
    cosine: int64 [c] the donor features that are novel (stitch.rules.is_novel), in increasing
    max cos; cosine_mse: float64 [c + 1]. Compare greedy_mse[j] with cosine_mse[j] at equal counts j.
    """

    greedy: torch.Tensor
    greedy_mse: torch.Tensor
    cosine: torch.Tensor
    cosine_mse: torch.Tensor
    base_mse: float

    def at(self, count: int) -> dict[str, float]:
        count = min(count, len(self.greedy), len(self.cosine))
        return dict(n=count, greedy=float(self.greedy_mse[count]), cosine=float(self.cosine_mse[count]))


def greedy_order(mg: MarginalGram, n: int | None = None) -> torch.Tensor:
    """Positions into mg.features, picked one at a time by exact marginal dMSE given those already
    picked, stopping after `n` picks or when no candidate lowers the MSE: int64 [k]."""
    if hasattr(mg, "greedy"):  # stitch.sparse_form.SparseMarginalGram: the same picks, no [m, m] Gram
        return mg.greedy(n)
    limit = len(mg.features) if n is None else min(n, len(mg.features))
    gram, lin = mg.gram, mg.linear.clone()
    diag = gram.diagonal().clone()
    picked = torch.zeros(len(mg.features), dtype=torch.bool)
    order = []
    for _ in range(limit):
        delta = (diag - 2 * lin).masked_fill(picked, float("inf"))
        j = int(torch.argmin(delta))
        if not delta[j] < 0:
            break
        order.append(j)
        picked[j] = True
        lin -= gram[j]  # the residual now contains -f_j w_j
    return torch.tensor(order, dtype=torch.int64)


def select_from_gram(
    mg: MarginalGram, max_cos: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, n: int | None = None
) -> Selection:
    """Selection from a measured MarginalGram and each candidate's max decoder cosine against the
    base (float [m], aligned with mg.features): no pass over tokens."""
    threshold = check_threshold(threshold, "greedy_selection")
    order = greedy_order(mg, n)
    mc = max_cos.cpu()
    cos_pos = is_novel(mc, threshold).nonzero().flatten()
    cos_pos = cos_pos[torch.argsort(mc[cos_pos], stable=True)]
    return Selection(
        greedy=mg.features[order],
        greedy_mse=mg.mse_of(order),
        cosine=mg.features[cos_pos],
        cosine_mse=mg.mse_of(cos_pos),
        base_mse=mg.base_mse,
    )


def candidate_max_cos(base: SAE, donor: SAE, candidates: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Max decoder cosine of the donor's `candidates` against `base`: float32 [m] on the CPU."""
    w = donor.W_dec.detach()[candidates.to(donor.device)]
    return max_cosine(w, base, backend=backend).values.cpu()


def greedy_selection(
    base: SAE,
    donor: SAE,
    acts: ActsLike,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    candidates=None,
    n: int | None = None,
    backend: str = "auto",
) -> Selection:
    """Pick donor features one at a time by their exact marginal dMSE given those already picked
    (the residual updated after each pick, via the MarginalGram, one pass over `acts`), stopping
    after `n` picks or when no candidate lowers the MSE; beside it, the cosine rule's selection
    (novel features, in increasing cosine) measured the same way."""
    threshold = check_threshold(threshold, "greedy_selection")
    cand = feature_index(donor, candidates, "greedy_selection").cpu()
    mg = marginal_gram(base, donor, acts, cand)
    return select_from_gram(mg, candidate_max_cos(base, donor, cand, backend), threshold, n)
