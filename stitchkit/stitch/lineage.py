"""Lineage across the whole width ladder: parent links of every adjacent pair of a family joined
into one graph, so each feature has ancestors (in narrower SAEs) and descendants (in wider ones).

Rung i links SAE i+1's features (children) to SAE i's (parents) wherever their decoder cosine is
above the novelty threshold (stitch.similarity.parent_links: exact fp32, chunked; memory bounded
by the links, never [F_i, F_i+1]). Each connected component of a rung's bipartite link graph is
one event, counted per rung:
    persist  one parent, one child, cosine above `persist` (0.9)
    drift    one parent, one child, cosine at or below it
    split    one parent, several children
    merge    several parents, one child
    tangle   several of both
    appear   a child without a parent: a novel feature (stitch.rules)
    vanish   a parent without a child
Across rungs, the components of the whole graph are the feature trees; the largest are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..sae.model import SAE, family_order
from .rules import DEFAULT_THRESHOLD, check_threshold
from .similarity import parent_links
from .swaps import components

EVENTS = ("persist", "drift", "split", "merge", "tangle", "appear", "vanish")
PERSIST = 0.9


@dataclass
class Rung:
    """The links between adjacent SAEs `small` (parents) and `large` (children): int64 [E]
    child, parent and their fp32 cosine [E]; `events` counts each kind of component."""

    small: str
    large: str
    small_width: int
    large_width: int
    child: torch.Tensor
    parent: torch.Tensor
    cos: torch.Tensor
    events: dict[str, int] = field(default_factory=dict)


def rung_events(n_parents: int, n_children: int, parent, child, cos, persist: float) -> dict[str, int]:
    """Counts of each event (module doc) in one rung's link graph."""
    comp = components(n_parents + n_children, parent, child + n_parents)
    is_parent = torch.arange(n_parents + n_children) < n_parents
    n_comp = n_parents + n_children
    per_p = torch.bincount(comp[is_parent], minlength=n_comp)
    per_c = torch.bincount(comp[~is_parent], minlength=n_comp)
    real = (per_p + per_c) > 0
    p, c = per_p[real], per_c[real]
    one_one = (p == 1) & (c == 1)
    # A one-to-one component has exactly one link: its cosine decides persist or drift.
    strong = torch.zeros(n_comp, dtype=torch.bool)
    strong[comp[parent]] = cos > persist
    return dict(
        persist=int((one_one & strong[real]).sum()),
        drift=int((one_one & ~strong[real]).sum()),
        split=int(((p == 1) & (c >= 2)).sum()),
        merge=int(((p >= 2) & (c == 1)).sum()),
        tangle=int(((p >= 2) & (c >= 2)).sum()),
        appear=int(((p == 0) & (c == 1)).sum()),
        vanish=int(((p == 1) & (c == 0)).sum()),
    )


class Lineage:
    """The link graph of a family (see the module doc). Features are named (level, index), level
    0 the narrowest SAE."""

    def __init__(self, saes: list[SAE], rungs: list[Rung], threshold: float, persist: float):
        self.names = [s.name for s in saes]
        self.widths = [s.d_sae for s in saes]
        self.rungs, self.threshold, self.persist = rungs, threshold, persist
        self._offsets = [0]
        for w in self.widths:
            self._offsets.append(self._offsets[-1] + w)

    def parents(self, level: int, index: int) -> list[int]:
        """The features of SAE level-1 linked to feature `index` of SAE `level`, ascending."""
        if level == 0:
            return []
        r = self.rungs[level - 1]
        return sorted(r.parent[r.child == index].tolist())

    def children(self, level: int, index: int) -> list[int]:
        """The features of SAE level+1 linked to feature `index` of SAE `level`, ascending."""
        if level >= len(self.rungs):
            return []
        r = self.rungs[level]
        return sorted(r.child[r.parent == index].tolist())

    def ancestors(self, level: int, index: int) -> list[tuple[int, int]]:
        """Every (level, index) reached by following parents, nearest generation first."""
        return self._walk(level, index, self.parents, -1)

    def descendants(self, level: int, index: int) -> list[tuple[int, int]]:
        """Every (level, index) reached by following children, nearest generation first."""
        return self._walk(level, index, self.children, +1)

    def _walk(self, level, index, step, direction) -> list[tuple[int, int]]:
        out, frontier = [], {index}
        while frontier:
            nxt = set()
            for i in frontier:
                nxt.update(step(level, i))
            level += direction
            out.extend((level, i) for i in sorted(nxt))
            frontier = nxt
        return out

    def trees(self, k: int = 3) -> list[dict]:
        """The k largest components of the whole graph (by features), each with its features
        per level and its links: {"features": [[level, index], ...], "links": [[level of the
        child, child, parent, cos], ...]}."""
        n = self._offsets[-1]
        a = (
            torch.cat([r.child + self._offsets[i + 1] for i, r in enumerate(self.rungs)])
            if self.rungs
            else None
        )
        b = torch.cat([r.parent + self._offsets[i] for i, r in enumerate(self.rungs)]) if self.rungs else None
        if a is None or len(a) == 0:
            return []
        comp = components(n, a, b)
        sizes = torch.bincount(comp, minlength=n)
        out = []
        for root in torch.argsort(sizes, descending=True, stable=True)[:k].tolist():
            if sizes[root] < 2:
                break
            members = (comp == root).nonzero().flatten()
            feats = [self._name(int(g)) for g in members]
            links = [[lvl + 1, int(c), int(p), float(cs)]
                     for lvl, r in enumerate(self.rungs)
                     for c, p, cs in zip(r.child.tolist(), r.parent.tolist(), r.cos.tolist())
                     if comp[c + self._offsets[lvl + 1]] == root]  # fmt: skip
            out.append(dict(features=[list(f) for f in feats], links=links))
        return out

    def _name(self, g: int) -> tuple[int, int]:
        level = max(i for i, o in enumerate(self._offsets[:-1]) if o <= g)
        return level, g - self._offsets[level]

    def counts(self) -> list[dict]:
        """Per rung: its pair and each event's count."""
        return [dict(pair=f"{r.large_width} vs {r.small_width}", **r.events) for r in self.rungs]

    def to_dict(self, trees: int = 3) -> dict:
        """The JSON export: widths, thresholds, per-rung counts and links (child, parent, cos),
        and the largest trees."""
        return dict(
            names=self.names,
            widths=self.widths,
            threshold=self.threshold,
            persist=self.persist,
            counts=self.counts(),
            links=[
                dict(
                    pair=f"{r.large_width} vs {r.small_width}",
                    child=r.child.tolist(),
                    parent=r.parent.tolist(),
                    cos=r.cos.tolist(),
                )
                for r in self.rungs
            ],  # fmt: skip
            trees=self.trees(trees),
        )


def lineage(
    family: Sequence[SAE],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    persist: float = PERSIST,
    backend: str = "auto",
) -> Lineage:
    """The lineage graph of `family` (any order; sorted by width): parent links (cosine above
    `threshold`) of every adjacent pair, and each rung's events (module doc)."""
    threshold = check_threshold(threshold, "lineage")
    saes = family_order(family)
    rungs = []
    for small, large in zip(saes, saes[1:]):
        links = parent_links(large, small, threshold, backend=backend)
        child, parent, cos = links.child.cpu(), links.parent.cpu(), links.cos.cpu()
        rungs.append(Rung(small.name, large.name, small.d_sae, large.d_sae, child, parent, cos,
                          rung_events(small.d_sae, large.d_sae, parent, child, cos, persist)))  # fmt: skip
    return Lineage(saes, rungs, threshold, persist)
