"""Threshold calibration (the reference work's limitation 1: "a somewhat arbitrary threshold").

Exact insertion dMSE is known for every large feature, so a similarity measure (max decoder
cosine, or max activation similarity) can be scored as a predictor of "inserting this feature
alone lowers MSE": a low similarity should mean "helps". For one measure over a pair's features:
- auroc: P(a helping feature has lower similarity than a hurting one), ties counting one half (the
  Mann-Whitney statistic, from average ranks in float64; 0.5 is chance, 1 perfect);
- best_threshold: the cut t maximising Youden's J = TPR - FPR of "similarity <= t predicts helps"
  (the novelty rule's direction, stitch.rules.is_novel), over the measure's own values;
- the 2x2 table (novel/reconstruction x helps/hurts) at each threshold 0.30 .. 0.95;
- the ROC curve (FPR, TPR at every cut), for the plot.
A feature with an undefined similarity (NaN: a feature that never fired, for activation
similarity) is left out and counted in n_undefined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from .rules import SWEEP_THRESHOLDS, is_novel


@dataclass
class Calibration:
    """One similarity measure as a predictor of dMSE < 0 over one pair's large features."""

    measure: str
    auroc: float
    best_threshold: float
    best_j: float
    n_helps: int
    n_hurts: int
    n_undefined: int
    tables: list[dict]  # {threshold, novel_helps, novel_hurts, recon_helps, recon_hurts}
    roc: tuple[list[float], list[float]]  # (FPR, TPR), from the strictest cut to the loosest

    def summary(self) -> dict:
        return dict(measure=self.measure, auroc=self.auroc, best_threshold=self.best_threshold,
                    best_j=self.best_j, n_helps=self.n_helps, n_hurts=self.n_hurts,
                    n_undefined=self.n_undefined)  # fmt: skip


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(equal): the Mann-Whitney U over
    n_pos n_neg, from average ranks (float64). NaN when either class is empty."""
    s, pos = score.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # Ties share their average rank.
    uniq, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        ends = torch.cumsum(counts, 0).double()
        avg = ends - (counts.double() - 1) / 2
        ranks[order] = avg[inverse]
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def calibrate(similarity: torch.Tensor, delta_mse: torch.Tensor, measure: str) -> Calibration:
    """Score `similarity` [F] (NaN: undefined) as a predictor of delta_mse [F] < 0 (see the module
    doc)."""
    if similarity.shape != delta_mse.shape:
        raise InvalidArgumentError(
            f"calibrate: similarity has shape {tuple(similarity.shape)}, delta_mse {tuple(delta_mse.shape)}"
        )
    sim, d = similarity.cpu(), delta_mse.double().cpu()
    ok = ~torch.isnan(sim)
    sim, helps = sim[ok], d[ok] < 0  # in its own dtype: the cut compares as classify's does
    n_helps, n_hurts = int(helps.sum()), int((~helps).sum())
    tables = []
    for t in SWEEP_THRESHOLDS:
        nov = is_novel(sim, t)
        tables.append(
            dict(
                threshold=t,
                novel_helps=int((nov & helps).sum()),
                novel_hurts=int((nov & ~helps).sum()),
                recon_helps=int((~nov & helps).sum()),
                recon_hurts=int((~nov & ~helps).sum()),
            )
        )
    sim = sim.double()
    fpr, tpr, cuts = _roc(sim, helps)
    j = tpr - fpr
    best = int(torch.argmax(j))
    both = n_helps > 0 and n_hurts > 0  # else no cut separates anything
    return Calibration(
        measure=measure,
        auroc=auroc(-sim, helps),  # a low similarity predicts "helps"
        best_threshold=float(cuts[best]) if both else float("nan"),
        best_j=float(j[best]) if both else float("nan"),
        n_helps=n_helps,
        n_hurts=n_hurts,
        n_undefined=int((~ok).sum()),
        tables=tables,
        roc=(fpr.tolist(), tpr.tolist()),
    )


def _roc(sim: torch.Tensor, helps: torch.Tensor):
    """(FPR, TPR, cut) of "sim <= cut predicts helps" at every distinct value of sim as the cut,
    ascending, with the empty rule (cut below every value) first."""
    if len(sim) == 0:
        e = torch.zeros(1, dtype=torch.float64)
        return e, e, torch.full((1,), float("nan"), dtype=torch.float64)
    order = torch.argsort(sim, stable=True)
    s, h = sim[order], helps[order].double()
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last position of each distinct value
    tp, fp = torch.cumsum(h, 0)[last], torch.cumsum(1 - h, 0)[last]
    n_pos, n_neg = max(float(h.sum()), 1.0), max(float((1 - h).sum()), 1.0)
    zero = torch.zeros(1, dtype=torch.float64)
    below = s[0] - 1.0
    return (torch.cat([zero, fp / n_neg]), torch.cat([zero, tp / n_pos]),
            torch.cat([below.reshape(1), s[last]]))  # fmt: skip
