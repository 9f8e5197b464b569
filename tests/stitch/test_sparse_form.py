"""The sparse co-firing forms (stitchkit.stitch.sparse_form) against the dense ones they replace
where [K, K] matrices do not fit: the same base MSE, linear terms, greedy moves and picks, the
same MSE of every change, and the frontier's CG refits equal to the dense solves."""

import pytest
import torch

from stitchkit.measure.accumulator import run_pass
from stitchkit.measure.gram import marginal_gram
from stitchkit.stitch.classify import classify
from stitchkit.stitch.frontier import LAMBDA_FACTORS, Move, frontier_points, greedy_moves, pair_moves
from stitchkit.stitch.selection import greedy_order
from stitchkit.stitch.sparse_form import (
    CodeColumnsAccumulator,
    SparseChangeForm,
    SparseMarginalGram,
)
from stitchkit.stitch.swaps import swap_groups
from tests.stitch.test_frontier import problem

FP64 = dict(rel=1e-10, abs=1e-12)


def sparse_form(small, large, x, chunks=700, merged=False):
    def acc():
        return CodeColumnsAccumulator(small, [(small, None), (large, None)], keep_x=True)

    if not merged:
        a = acc()
        run_pass([a], list(x.split(chunks)), d_in=x.shape[1], device=x.device)
        return SparseChangeForm(a.result(), small, large)
    half = len(x) // 2  # two shards merged: the one-process result
    a, b = acc(), acc()
    run_pass([a], list(x[:half].split(chunks)), d_in=x.shape[1], device=x.device)
    run_pass([b], list(x[half:].split(chunks)), d_in=x.shape[1], device=x.device)
    a.merge(b)
    return SparseChangeForm(a.result(), small, large)


def test_the_sparse_change_form_is_the_dense_one():
    small, large, x, dense = problem()
    sparse = sparse_form(small, large, x)
    assert sparse.base_mse == pytest.approx(dense.base_mse, **FP64)
    assert sparse.base_l0 == pytest.approx(dense.base_l0, **FP64)
    torch.testing.assert_close(sparse.lin, dense.lin, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sparse.rate, dense.rate, rtol=0, atol=0)
    c = classify(small, large, 0.7)
    moves = pair_moves(c, swap_groups(small, large, 0.7))
    assert len(moves) > 5 and any(len(m.removes) for m in moves)
    scale = dense.base_mse / dense.base_l0
    for lam in [f * scale for f in LAMBDA_FACTORS]:
        order = sparse.greedy(moves, lam)
        assert order == greedy_moves(dense, moves, lam)
        chosen = [moves[i] for i in order]
        for a, b in zip(sparse.change(chosen), dense.change(chosen)):
            assert a == pytest.approx(b, **FP64)
    hand = [Move("a", torch.tensor([0, 3]), torch.tensor([0, 1, 2])),
            Move("b", torch.tensor([7]), torch.tensor([30]))]  # fmt: skip
    for a, b in zip(sparse.change(hand), dense.change(hand)):
        assert a == pytest.approx(b, **FP64)
    merged = sparse_form(small, large, x, chunks=333, merged=True)
    assert merged.greedy(moves, scale) == sparse.greedy(moves, scale)
    torch.testing.assert_close(merged.lin, sparse.lin, rtol=1e-12, atol=1e-14)


def test_sparse_frontier_refits_equal_the_dense_solves():
    small, large, x, dense = problem()
    sparse = sparse_form(small, large, x)
    moves = pair_moves(classify(small, large, 0.7), swap_groups(small, large, 0.7))
    want, got = frontier_points(dense, moves), frontier_points(sparse, moves)
    assert len(got) == len(want) > 2
    for a, b in zip(got, want):
        assert (a.n_inserted, a.n_removed, a.n_swaps) == (b.n_inserted, b.n_removed, b.n_swaps)
        assert a.lam == pytest.approx(b.lam, **FP64)
        assert a.fit_mse_before == pytest.approx(b.fit_mse_before, **FP64)
        assert a.fit_mse == pytest.approx(b.fit_mse, rel=1e-9)
        assert a.fit_l0 == pytest.approx(b.fit_l0, **FP64)
        torch.testing.assert_close(a.sae.W_dec, b.sae.W_dec, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a.sae.b_dec, b.sae.b_dec, rtol=1e-6, atol=1e-8)


def test_sparse_greedy_selection_is_the_dense_one():
    small, large, _, _ = problem()
    g = torch.Generator().manual_seed(9)  # tokens made of the large SAE's directions: many picks
    codes = torch.rand(2500, 45, generator=g, dtype=torch.float64) * (torch.rand(2500, 45, generator=g) < 0.1)
    x = 4 * codes @ large.W_dec.detach() + 0.1 * torch.randn(2500, 12, generator=g, dtype=torch.float64)
    cand = torch.arange(5, 45)
    dense = marginal_gram(small, large, x, cand)
    acc = CodeColumnsAccumulator(small, [(large, cand)])
    run_pass([acc], list(x.split(500)), d_in=12, device=x.device)
    sparse = SparseMarginalGram(acc.result(), cand)
    assert sparse.base_mse == pytest.approx(dense.base_mse, **FP64)
    torch.testing.assert_close(sparse.linear, dense.linear, rtol=1e-10, atol=1e-12)
    order = greedy_order(sparse)
    assert len(order) >= 3 and torch.equal(order, greedy_order(dense))
    assert torch.equal(greedy_order(sparse, 2), order[:2])
    torch.testing.assert_close(sparse.mse_of(order), dense.mse_of(order), rtol=1e-10, atol=1e-12)
    other = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:25]
    torch.testing.assert_close(sparse.mse_of(other), dense.mse_of(other), rtol=1e-10, atol=1e-12)
