"""Swap groups on a known link graph, swap and insert (stitchkit.stitch.swaps)."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    classify,
    insert,
    swap,
    swap_groups,
)
from tests.helpers import built_pair


def test_classify_and_swap_groups_on_a_known_graph():
    small, large = built_pair()
    c = classify(small, large, 0.7)
    assert c.novel.tolist() == [False, False, False, False, True, False]
    assert c.nearest[0] == 0 and c.nearest[5] == 3
    assert c.novel_features.tolist() == [4]
    t, n = c.sweep
    assert n[torch.isclose(t, torch.tensor(0.7))].item() == 1 and n[-1] >= 1
    groups = swap_groups(small, large, 0.7)
    as_sets = [(set(g.children.tolist()), set(g.parents.tolist())) for g in groups]
    assert as_sets == [({2, 3}, {1, 2}), ({0, 1}, {0}), ({5}, {3})]
    assert [g.cos for g in groups] == sorted((g.cos for g in groups), reverse=True)
    assert groups[0].n_links == 3  # 2-1, 2-2, 3-2
    # A threshold above the weakest link drops group C.
    assert len(swap_groups(small, large, 0.73)) == 2


def test_swap_and_insert_keep_provenance_and_shapes():
    small, large = built_pair()
    g = swap_groups(small, large, 0.7)[0]
    s = swap(small, large, g)
    assert s.d_sae == small.d_sae - 2 + 2
    assert s.provenance.entries() == [("small", 0), ("small", 3), ("small", 4), ("large", 2), ("large", 3)]
    assert s.provenance.sources == ("small", "large")
    ins = insert(small, large, [4])
    assert ins.provenance.entries()[-1] == ("large", 4)
    with pytest.raises(InvalidArgumentError, match="empty"):
        insert(small, large, [])
