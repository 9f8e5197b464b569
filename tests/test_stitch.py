import math

import pytest
import torch
from conftest import random_sae

from stitchkit import (
    SAE,
    InvalidArgumentError,
    ShapeError,
    activation_similarity,
    classify,
    delta_table,
    evaluate,
    greedy_selection,
    insert,
    insertion_curve,
    interpolate,
    marginal_delta_mse,
    similarity_agreement,
    swap,
    swap_groups,
)


def unit(v):
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm()


def rotated(a, b, angle_cos):
    """A unit vector at cosine `angle_cos` to unit a, in the plane of a and b."""
    b = b - (b @ a) * a
    b = b / b.norm()
    return angle_cos * a + math.sqrt(1 - angle_cos**2) * b


def built_pair():
    """Small and large SAEs (d_in=6) with a known link graph at threshold 0.7."""
    e = torch.eye(6, dtype=torch.float64)
    s_mid = unit(e[1] + e[2])
    small_rows = [e[0], rotated(s_mid, e[1], 0.95), rotated(s_mid, e[2], 0.95), e[3], e[5]]
    # small 1 and 2 are at cos ~0.81 of each other: a large row between them links to both.
    large_rows = [
        rotated(e[0], e[4], 0.9),  # child of small 0                       (group A)
        rotated(e[0], e[5], 0.8),  # child of small 0, cos 0.8 to e5? no: 0.6 -> only small 0
        s_mid,  # links small 1 and small 2                                 (group B)
        rotated(small_rows[2], e[4], 0.75),  # child of small 2             (group B)
        e[4],  # novel: cos 0 to everything small
        rotated(e[3], e[4], 0.72),  # child of small 3, cos 0.72            (group C)
    ]
    small = SAE(6, 5, name="small", dtype=torch.float64)
    large = SAE(6, 6, name="large", dtype=torch.float64)
    with torch.no_grad():
        small.W_dec.copy_(torch.stack(small_rows))
        small.W_enc.copy_(small.W_dec.T)
        large.W_dec.copy_(torch.stack(large_rows))
        large.W_enc.copy_(large.W_dec.T)
        large.b_enc.fill_(-0.1)
    return small, large


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


def test_interpolation_path_is_exact_and_reaches_the_large_features():
    small = random_sae(d_in=8, d_sae=10, seed=1, name="small", dtype=torch.float64)
    large = random_sae(d_in=8, d_sae=25, seed=2, name="large", dtype=torch.float64)
    with torch.no_grad():  # make some large rows children of small rows
        large.W_dec[:10] = small.W_dec + 0.3 * torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
        large.W_dec[10] = small.W_dec[0] + 0.2 * small.W_dec[1]
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    path = interpolate(small, large, x, 0.7)
    n_steps = 2 + len(path.groups)
    assert len(path.labels) == n_steps and len(path.metrics.mse) == n_steps
    assert len(path.groups) >= 3
    for step in (0, 1, n_steps - 1):
        m = evaluate(path.sae(step), x)
        assert path.metrics.mse[step].item() == pytest.approx(m.mse, rel=1e-10)
        assert path.metrics.l0[step].item() == pytest.approx(m.l0, rel=1e-12)
    final = path.sae(n_steps - 1)
    from_large = [i for s, i in final.provenance.entries() if s == "large"]
    assert sorted(from_large) == list(range(25))  # every large feature is in by the end
    linked = torch.cat([g.parents for g in path.groups]).tolist()
    from_small = sorted(i for s, i in final.provenance.entries() if s == "small")
    assert from_small == sorted(set(range(10)) - set(linked))
    with pytest.raises(InvalidArgumentError, match=r"step must lie in \[0, "):
        path.sae(n_steps)


def test_insertion_curve_matches_explicit_insertions():
    small = random_sae(d_in=8, d_sae=10, seed=5, name="small", dtype=torch.float64)
    large = random_sae(d_in=8, d_sae=30, seed=6, name="large", dtype=torch.float64)
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    order = [7, 3, 29, 0, 11, 12]
    curve = insertion_curve(small, large, order, x)
    assert curve.n_features.tolist() == [10, 11, 12, 13, 14, 15, 16]
    for k in (1, 4, 6):
        explicit = evaluate(insert(small, large, order[:k]), x).mse
        assert curve.mse[k].item() == pytest.approx(explicit, rel=1e-10)
    coarse = insertion_curve(small, large, order, x, points=3)
    assert coarse.n_features.tolist() == [10, 12, 14, 16]
    assert torch.allclose(coarse.mse, curve.mse[[0, 2, 4, 6]])


def test_delta_table_counts():
    small, large = built_pair()
    c = classify(small, large)
    dm = torch.tensor([-1.0, 2.0, 3.0, -4.0, -5.0, 6.0], dtype=torch.float64)
    t = delta_table(c, dm)
    assert (t.novel_helps, t.novel_hurts, t.recon_helps, t.recon_hurts) == (1, 0, 2, 3)
    with pytest.raises(InvalidArgumentError, match="one value per large feature"):
        delta_table(c, dm[:3])


def test_greedy_selection_is_exact_and_beats_or_ties_cosine_at_equal_counts():
    g = torch.Generator().manual_seed(9)
    dirs = torch.randn(40, 16, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=1, keepdim=True)
    donor = SAE(16, 40, name="donor", dtype=torch.float64)
    with torch.no_grad():
        donor.W_dec.copy_(dirs)
        donor.W_enc.copy_(dirs.T)
        donor.b_enc.fill_(-0.4)
    base = donor.select(torch.arange(6), name="base")
    on = torch.rand(400, 40, generator=g, dtype=torch.float64) < 0.05
    codes = on * torch.rand(400, 40, generator=g, dtype=torch.float64)
    x = codes @ dirs
    sel = greedy_selection(base, donor, x, threshold=0.7)
    assert len(sel.greedy) >= 2
    first = int(torch.argmin(marginal_delta_mse(base, donor, x)))
    assert int(sel.greedy[0]) == first
    assert (sel.greedy_mse[1:] < sel.greedy_mse[:-1]).all()  # stops before a pick would hurt
    k = len(sel.greedy)
    explicit = evaluate(insert(base, donor, sel.greedy), x).mse
    assert sel.greedy_mse[k].item() == pytest.approx(explicit, rel=1e-9)
    if len(sel.cosine):
        c = len(sel.cosine)
        explicit = evaluate(insert(base, donor, sel.cosine), x).mse
        assert sel.cosine_mse[c].item() == pytest.approx(explicit, rel=1e-9)
        # The first greedy pick is the best single feature: never worse than the cosine rule's first.
        assert sel.greedy_mse[1] <= sel.cosine_mse[1] + 1e-12
    assert len(greedy_selection(base, donor, x, n=1).greedy) == 1


def test_similarity_agreement_on_identical_and_unrelated_pairs():
    small = random_sae(d_in=8, d_sae=12, seed=11, name="small")
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(12))
    same = small.select(torch.arange(12).flip(0), name="same")
    c = classify(small, same)
    a = similarity_agreement(c, activation_similarity(same, small, x))
    assert a.n_live > 0
    assert a.same_nearest == 1.0 and a.class_agreement == 1.0


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, True, "0.7", float("nan")])
def test_thresholds_outside_unit_interval_are_refused(bad):
    small, large = built_pair()
    for fn in (classify, swap_groups):
        with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
            fn(small, large, bad)
    with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
        interpolate(small, large, torch.zeros(3, 6, dtype=torch.float64), bad)


def test_pairs_with_different_inputs_are_refused():
    small, large = built_pair()
    narrow = random_sae(d_in=5, d_sae=4, name="narrow", dtype=torch.float64)
    with pytest.raises(ShapeError, match="d_in"):
        classify(small, narrow)
    small.hook_name, large.hook_name = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"
    with pytest.raises(InvalidArgumentError, match="reads hook"):
        swap_groups(small, large)
    with pytest.raises(ShapeError, match=r"expected \[n, 6\]"):
        interpolate(built_pair()[0], built_pair()[1], torch.zeros(3, 5, dtype=torch.float64))
