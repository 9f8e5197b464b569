"""The stitching experiments: classify, insert, swap, interpolate, and greedy selection.

Small and large are two SAEs trained on the same activations (same d_in, same hook). A large
feature is *novel* when its max decoder cosine against the small SAE is <= threshold, and a
*reconstruction* feature otherwise. Pairs above the threshold are *parent links* (child in
large, parent in small); connected components of the link graph are *swap groups*.
Every SAE built here keeps each feature's provenance (source SAE, source index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .activations import ActsLike
from .errors import InvalidArgumentError
from .evaluate import (
    PathMetrics,
    Progress,
    marginal_gram,
    path_metrics,
)
from .sae import SAE, check_same_input, feature_index
from .similarity import Links, MaxCosine, max_cosine, novel_fraction_sweep, parent_links


def check_threshold(threshold: float, fn: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise InvalidArgumentError(f"{fn}: threshold must lie in (0, 1), got {threshold!r}")
    return float(threshold)


@dataclass
class Classification:
    """Each large feature's max decoder cosine against the small SAE and its class.

    max_cos: float32 [F_large]; nearest: int64 [F_large], the small feature attaining it;
    novel: bool [F_large], max_cos <= threshold; sweep: (thresholds [T], n_novel [T]) for
    0.30..0.95 from the same pass.
    """

    small: str
    large: str
    threshold: float
    max_cos: torch.Tensor
    nearest: torch.Tensor
    novel: torch.Tensor
    sweep: tuple[torch.Tensor, torch.Tensor]

    @property
    def reconstruction(self) -> torch.Tensor:
        return ~self.novel

    @property
    def novel_features(self) -> torch.Tensor:
        """int64 indices of the novel large features."""
        return self.novel.nonzero().flatten()

    @property
    def reconstruction_features(self) -> torch.Tensor:
        return self.reconstruction.nonzero().flatten()


def classify(
    small: SAE, large: SAE, threshold: float = 0.7, *, backend: str = "auto", precision: str = "fp32"
) -> Classification:
    """Split `large`'s features into novel (max cos <= threshold) and reconstruction features."""
    threshold = check_threshold(threshold, "classify")
    check_same_input(small, large, "classify")
    values, indices = max_cosine(large, small, backend=backend, precision=precision)
    values, indices = values.cpu(), indices.cpu()
    return Classification(
        small=small.name,
        large=large.name,
        threshold=threshold,
        max_cos=values,
        nearest=indices,
        novel=values <= threshold,
        sweep=novel_fraction_sweep(values),
    )


@dataclass
class DeltaTable:
    """The reference work's 2x2 table: counts of (novel, reconstruction) x (dMSE < 0, dMSE >= 0)."""

    novel_helps: int
    novel_hurts: int
    recon_helps: int
    recon_hurts: int

    def rows(self) -> list[dict]:
        return [
            dict(cls="novel", helps=self.novel_helps, hurts=self.novel_hurts),
            dict(cls="reconstruction", helps=self.recon_helps, hurts=self.recon_hurts),
        ]


def delta_table(classification: Classification, delta_mse: torch.Tensor) -> DeltaTable:
    """Cross `classification` with per-feature dMSE (from marginal_delta_mse over all large features)."""
    if delta_mse.shape != classification.novel.shape:
        raise InvalidArgumentError(
            f"delta_table: delta_mse has shape {tuple(delta_mse.shape)}, expected one value per large "
            f"feature {tuple(classification.novel.shape)}"
        )
    novel, helps = classification.novel, delta_mse.cpu() < 0
    return DeltaTable(
        novel_helps=int((novel & helps).sum()),
        novel_hurts=int((novel & ~helps).sum()),
        recon_helps=int((~novel & helps).sum()),
        recon_hurts=int((~novel & ~helps).sum()),
    )


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
    idx = feature_index(donor, order, "insertion_curve").cpu()
    n = len(idx)
    cuts = (
        list(range(n + 1))
        if points is None or points >= n
        else torch.linspace(0, n, points + 1).round().long().unique().tolist()
    )
    steps = [(idx[a:b], []) for a, b in zip(cuts, cuts[1:])]
    return path_metrics(base, donor, steps, acts, progress=progress)


@dataclass
class SwapGroup:
    """A connected component of the parent-link graph: replace `parents` (small-SAE indices)
    by `children` (large-SAE indices). cos: the largest link cosine in the group."""

    children: torch.Tensor
    parents: torch.Tensor
    cos: float
    n_links: int


def _components(n_children: int, links: Links) -> tuple[torch.Tensor, torch.Tensor]:
    """Union-find over the bipartite graph; nodes 0..n_children-1 are children, the rest parents.
    Returns (root of every linked child, root of every linked parent) as python-indexed tensors."""
    parent_of = {}

    def find(a: int) -> int:
        root = a
        while parent_of.get(root, root) != root:
            root = parent_of[root]
        while parent_of.get(a, a) != root:
            parent_of[a], a = root, parent_of[a]
        return root

    for c, p in zip(links.child.tolist(), links.parent.tolist()):
        ra, rb = find(c), find(n_children + p)
        if ra != rb:
            parent_of[max(ra, rb)] = min(ra, rb)
    return (
        torch.tensor([find(c) for c in links.child.tolist()], dtype=torch.int64),
        torch.tensor([find(n_children + p) for p in links.parent.tolist()], dtype=torch.int64),
    )


def swap_groups(
    small: SAE, large: SAE, threshold: float = 0.7, *, links: Links | None = None, backend: str = "auto"
) -> list[SwapGroup]:
    """Connected components of the bipartite parent graph (child in large, parent in small,
    decoder cos > threshold), sorted by decreasing max link cosine (ties: smallest child first)."""
    threshold = check_threshold(threshold, "swap_groups")
    check_same_input(small, large, "swap_groups")
    if links is None:
        links = parent_links(large, small, threshold, backend=backend)
    links = Links(links.child.cpu(), links.parent.cpu(), links.cos.cpu())
    if len(links.child) == 0:
        return []
    root, _ = _components(large.d_sae, links)
    groups = []
    for r in torch.unique(root).tolist():
        sel = root == r
        groups.append(
            SwapGroup(
                children=torch.unique(links.child[sel]),
                parents=torch.unique(links.parent[sel]),
                cos=float(links.cos[sel].max()),
                n_links=int(sel.sum()),
            )
        )
    groups.sort(key=lambda g: (-g.cos, int(g.children[0])))
    return groups


def swap(base: SAE, donor: SAE, group: SwapGroup, *, name: str | None = None) -> SAE:
    """`base` without the group's parents (base indices) and with its children (donor indices)."""
    parents = feature_index(base, group.parents, "swap: group.parents", allow_empty=True).cpu()
    keep = torch.ones(base.d_sae, dtype=torch.bool)
    keep[parents] = False
    children = feature_index(donor, group.children, "swap: group.children", allow_empty=True)
    parts = [(base, keep.nonzero().flatten())]
    if len(children):
        parts.append((donor, children))
    return SAE.from_features(parts, base=base, name=name or f"{base.name}~{donor.name}")


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
    threshold: float = 0.7,
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
    novel = classification.novel_features
    steps = [(novel, torch.empty(0, dtype=torch.int64))] + [(g.children, g.parents) for g in groups]
    labels = ["small", f"+{len(novel)} novel"] + [
        f"swap {len(g.parents)}->{len(g.children)} (cos {g.cos:.3f})" for g in groups
    ]
    metrics = path_metrics(small, large, steps, acts, progress=progress)
    return Interpolation(small, large, classification, groups, steps, labels, metrics)


@dataclass
class Selection:
    """Greedy exact-marginal selection vs cosine-threshold selection of donor features.

    greedy: int64 [k] donor indices in pick order; greedy_mse: float64 [k + 1], MSE after each.
    cosine: int64 [c] the donor features with max cos <= threshold, in increasing max cos;
    cosine_mse: float64 [c + 1]. Compare greedy_mse[j] with cosine_mse[j] at equal counts j.
    """

    greedy: torch.Tensor
    greedy_mse: torch.Tensor
    cosine: torch.Tensor
    cosine_mse: torch.Tensor
    base_mse: float

    def at(self, count: int) -> dict[str, float]:
        count = min(count, len(self.greedy), len(self.cosine))
        return dict(n=count, greedy=float(self.greedy_mse[count]), cosine=float(self.cosine_mse[count]))


def greedy_selection(
    base: SAE,
    donor: SAE,
    acts: ActsLike,
    *,
    threshold: float = 0.7,
    candidates=None,
    n: int | None = None,
    backend: str = "auto",
) -> Selection:
    """Pick donor features one at a time by their exact marginal dMSE given those already picked
    (the residual updated after each pick, via the MarginalGram, one pass over `acts`), stopping
    after `n` picks or when no candidate lowers the MSE; beside it, the cosine rule's selection
    (max cos <= threshold, in increasing cosine) measured the same way."""
    threshold = check_threshold(threshold, "greedy_selection")
    cand = feature_index(donor, candidates, "greedy_selection").cpu()
    mg = marginal_gram(base, donor, acts, cand)
    limit = len(cand) if n is None else min(n, len(cand))
    gram, lin = mg.gram, mg.linear.clone()
    diag = gram.diagonal().clone()
    picked = torch.zeros(len(cand), dtype=torch.bool)
    order = []
    for _ in range(limit):
        delta = (diag - 2 * lin).masked_fill(picked, float("inf"))
        j = int(torch.argmin(delta))
        if not delta[j] < 0:
            break
        order.append(j)
        picked[j] = True
        lin -= gram[j]  # the residual now contains -f_j w_j
    order_t = torch.tensor(order, dtype=torch.int64)
    mc = max_cosine(donor.W_dec.detach()[cand.to(donor.device)], base, backend=backend).values.cpu()
    cos_pos = (mc <= threshold).nonzero().flatten()
    cos_pos = cos_pos[torch.argsort(mc[cos_pos], stable=True)]
    return Selection(
        greedy=cand[order_t],
        greedy_mse=mg.mse_of(order_t),
        cosine=cand[cos_pos],
        cosine_mse=mg.mse_of(cos_pos),
        base_mse=mg.base_mse,
    )


@dataclass
class Agreement:
    """How decoder cosine and activation similarity agree on the large SAE's features.

    same_nearest: fraction of reconstruction features (by decoder cosine) whose nearest small
    feature is the same under both measures. class_agreement: fraction of live features that
    both call novel or both call reconstruction (activation similarity at the same threshold).
    spearman: rank correlation of the two max-similarity values over live features.
    """

    same_nearest: float
    class_agreement: float
    spearman: float
    n_live: int


def _ranks(v: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(v, dtype=torch.float64)
    r[torch.argsort(v, stable=True)] = torch.arange(len(v), dtype=torch.float64)
    return r


def similarity_agreement(decoder: Classification, activation: MaxCosine) -> Agreement:
    """Compare `classify`'s decoder cosines with `activation_similarity` of the same SAE pair."""
    live = activation.indices.cpu() >= 0
    dec_v, act_v = decoder.max_cos[live].double(), activation.values.cpu()[live].double()
    recon = (~decoder.novel) & live
    same = (
        (decoder.nearest[recon] == activation.indices.cpu()[recon]).double().mean()
        if recon.any()
        else torch.tensor(float("nan"))
    )
    agree = ((dec_v > decoder.threshold) == (act_v > decoder.threshold)).double().mean()
    rd, ra = _ranks(dec_v), _ranks(act_v)
    rd, ra = rd - rd.mean(), ra - ra.mean()
    rho = (rd @ ra) / (rd.norm() * ra.norm()) if len(rd) > 1 else torch.tensor(float("nan"))
    return Agreement(float(same), float(agree), float(rho), int(live.sum()))


def family_order(family: Sequence[SAE]) -> list[SAE]:
    """`family` sorted by width, checked to share d_in and hook."""
    if not family:
        raise InvalidArgumentError("family: expected at least one SAE, got none")
    ordered = sorted(family, key=lambda s: s.d_sae)
    for s in ordered[1:]:
        check_same_input(ordered[0], s, "family")
    return ordered
