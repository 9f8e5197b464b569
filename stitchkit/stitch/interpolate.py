"""Paths from a small SAE toward a large one: inserting donor features (insertion curves) and the
reference work's interpolation (every novel feature, then the swap groups in order of cosine).
Planning a path (which features each step adds and removes) is apart from measuring it
(measure.paths), so the study measures every path in its one pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..errors import InvalidArgumentError
from ..measure.accumulator import Progress
from ..measure.paths import PathMetrics, Step, path_metrics
from ..sae.model import SAE, feature_index
from .classify import Classification, classify
from .rules import DEFAULT_THRESHOLD, check_threshold
from .swaps import SwapGroup, swap_groups


def insert(base: SAE, donor: SAE, features, *, name: str | None = None) -> SAE:
    """`base` plus the donor's `features` (appended, each keeping its donor activation and provenance)."""
    idx = feature_index(donor, features, "insert")
    return SAE.from_features(
        [(base, torch.arange(base.d_sae)), (donor, idx)], base=base, name=name or f"{base.name}+{donor.name}"
    )


def insertion_curve(
    base: SAE, donor: SAE, order, acts: ActsLike, *, points: int | None = None, progress: Progress = None
) -> PathMetrics:
    """MSE / L0 of `base` after inserting the first k donor features of `order`, for k = 0..len
    (or at `points` evenly spaced k). Exact, one pass."""
    return path_metrics(base, donor, insertion_steps(donor, order, points), acts, progress=progress)


def insertion_steps(donor: SAE, order, points: int | None = None) -> list[Step]:
    """The path of insertion_curve: the donor features of `order` added in that order, one per step
    (or in `points` evenly spaced groups), nothing removed."""
    idx = feature_index(donor, order, "insertion_curve").cpu()
    n = len(idx)
    cuts = (
        list(range(n + 1))
        if points is None or points >= n
        else torch.linspace(0, n, points + 1).round().long().unique().tolist()
    )
    return [(idx[a:b], []) for a, b in zip(cuts, cuts[1:])]


@dataclass
class Interpolation:
    """A path from `small` to `large`: step 0 is small, step 1 adds every novel feature, then
    one swap group per step in decreasing order of cosine. metrics: PathMetrics over the steps.
    The path ends at the large SAE's features plus the small features no link reaches."""

    small: SAE
    large: SAE
    classification: Classification
    groups: list[SwapGroup]
    steps: list[tuple[torch.Tensor, torch.Tensor]]
    labels: list[str]
    metrics: PathMetrics

    def sae(self, step: int) -> SAE:
        """The stitched SAE after `step` steps (provenance per feature)."""
        if not 0 <= step < len(self.labels):
            raise InvalidArgumentError(
                f"Interpolation.sae: step must lie in [0, {len(self.labels)}), got {step}"
            )
        added = [a for a, _ in self.steps[:step]]
        removed = [r for _, r in self.steps[:step]]
        keep = torch.ones(self.small.d_sae, dtype=torch.bool)
        if removed:
            keep[torch.cat(removed)] = False
        parts = [(self.small, keep.nonzero().flatten())]
        add = torch.cat(added) if added else torch.empty(0, dtype=torch.int64)
        if len(add):
            parts.append((self.large, add))
        return SAE.from_features(parts, base=self.small, name=f"{self.small.name}->{self.large.name}@{step}")


def interpolate(
    small: SAE,
    large: SAE,
    acts: ActsLike,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    backend: str = "auto",
    progress: Progress = None,
) -> Interpolation:
    """Interpolate from `small` to `large`: add all novel features, then apply the swap groups
    in decreasing order of cosine, measuring (n_features, MSE, normalised MSE, L0) exactly at
    every step in one pass over `acts`."""
    threshold = check_threshold(threshold, "interpolate")
    classification = classify(small, large, threshold, backend=backend)
    groups = swap_groups(small, large, threshold, backend=backend)
    steps, labels = interpolation_path(classification, groups)
    metrics = path_metrics(small, large, steps, acts, progress=progress)
    return Interpolation(small, large, classification, groups, steps, labels, metrics)


def interpolation_path(
    classification: Classification, groups: list[SwapGroup]
) -> tuple[list[Step], list[str]]:
    """The interpolation's steps and their labels: every novel feature, then one swap group per
    step (groups in the order given: swap_groups sorts them by decreasing cosine)."""
    novel = classification.novel_features
    steps = [(novel, torch.empty(0, dtype=torch.int64))] + [(g.children, g.parents) for g in groups]
    labels = ["small", f"+{len(novel)} novel"] + [
        f"swap {len(g.parents)}->{len(g.children)} (cos {g.cos:.3f})" for g in groups
    ]
    return steps, labels
