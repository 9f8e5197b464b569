"""Lineage across the width ladder (stitchkit.stitch.lineage) on SAEs built from the toy's known
directions: every split, persist, drift, merge, appear and vanish is recovered exactly, with
ancestors and descendants across three rungs."""

import torch

import stitchkit as sk
from stitchkit.stitch.lineage import EVENTS, lineage


def sae_of(rows: torch.Tensor, name: str) -> sk.SAE:
    """An SAE whose decoder rows are `rows` (unit) and encoder their transpose."""
    sae = sk.SAE(rows.shape[1], rows.shape[0], "relu", name=name)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T)
    return sae


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def ladder():
    toy = sk.make_toy(d_in=64, n_parents=8, children_per_parent=2, n_rare=6, child_cosine=0.8, seed=3)
    P = toy.directions[:8]
    kids = toy.directions[8:24]  # children of parent p: rows 2p, 2p + 1
    R = toy.directions[24:]
    g = torch.Generator().manual_seed(4)
    r0 = unit(R[0] - (R[0] @ P[7]) * P[7])  # exactly orthogonal to P7: their mean is at cos 0.7071
    drift = unit(
        0.8 * P[6] + 0.6 * unit(torch.randn(64, generator=g) - (torch.randn(64, generator=g) @ P[6]) * P[6])
    )
    level0 = torch.stack([*P, r0, R[1]])  # 10 features
    level1 = torch.cat([
        kids[:8],  # parents 0-3 split in two
        P[4:6],  # parents 4, 5 persist exactly
        drift[None],  # parent 6 drifts (cos about 0.8)
        unit(P[7] + r0)[None],  # P7 and r0 merge
        R[2:4],  # two appear; R1 vanishes
    ])  # fmt: skip
    level2 = torch.cat([level1, R[4:6]])  # everything persists; two more appear
    saes = [sae_of(level0, "w10"), sae_of(level1, "w14"), sae_of(level2, "w16")]
    return toy, saes


def test_every_event_of_a_known_ladder_is_recovered():
    toy, saes = ladder()
    lin = lineage(saes, 0.7)
    assert lin.widths == [10, 14, 16]
    first, second = lin.counts()
    assert {k: first[k] for k in EVENTS} == dict(
        persist=2, drift=1, split=4, merge=1, tangle=0, appear=2, vanish=1
    )
    assert {k: second[k] for k in EVENTS} == dict(
        persist=14, drift=0, split=0, merge=0, tangle=0, appear=2, vanish=0
    )
    # The toy's own parent of each child is the child's only parent.
    for c in range(8):
        assert lin.parents(1, c) == [int(toy.parent_of[8 + c])]
        assert lin.children(0, c // 2) == [c - c % 2, c - c % 2 + 1]
    assert lin.parents(1, 11) == [7, 8]  # the merge
    assert lin.descendants(0, 9) == []  # R1 vanished
    assert lin.ancestors(2, 14) == [] and lin.ancestors(2, 15) == []  # appeared at the last rung
    assert lin.ancestors(2, 3) == [(1, 3), (0, 1)]
    assert lin.descendants(0, 0) == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_trees_and_export():
    _, saes = ladder()
    lin = lineage(saes, 0.7)
    trees = lin.trees(2)
    assert len(trees) == 2 and all(len(t["features"]) == 5 for t in trees)  # a split parent: 1 + 2 + 2
    d = lin.to_dict()
    assert d["widths"] == [10, 14, 16] and len(d["links"]) == 2
    assert sum(len(r["child"]) for r in d["links"]) == len(lin.rungs[0].child) + len(lin.rungs[1].child)
    assert d["counts"][0]["pair"] == "14 vs 10"
