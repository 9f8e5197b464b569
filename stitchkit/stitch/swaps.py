"""Swap groups: connected components of the parent-link graph (child in large, parent in small,
decoder cos above the threshold). Applying one replaces its parents by its children."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.max_cosine import Links
from ..sae.model import SAE, check_same_input, feature_index
from .rules import DEFAULT_THRESHOLD, check_threshold
from .similarity import parent_links


@dataclass
class SwapGroup:
    """A connected component of the parent-link graph: replace `parents` (small-SAE indices)
    by `children` (large-SAE indices). cos: the largest link cosine in the group."""

    children: torch.Tensor
    parents: torch.Tensor
    cos: float
    n_links: int


def components(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int64 [n]: the connected component of each of n nodes under edges (a[e], b[e]), named by
    its smallest node (label propagation: each round takes the smallest label across every edge
    and jumps along the labels, until nothing changes; rounds grow with the log of the diameter)."""
    label = torch.arange(n)
    if len(a) == 0:
        return label
    while True:
        low = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, low, "amin").scatter_reduce(0, b, low, "amin")
        new = new[new]
        if torch.equal(new, label):
            return label
        label = new


def swap_groups(
    small: SAE,
    large: SAE,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    links: Links | None = None,
    backend: str = "auto",
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
    root = components(large.d_sae + small.d_sae, links.child, links.parent + large.d_sae)[links.child]
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
