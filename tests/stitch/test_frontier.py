"""The MSE-L0 frontier (stitchkit.stitch.frontier): the quadratic form's MSE and L0 of a stitched
SAE equal the measured ones to float64 rounding, the refit equals retrain_decoder's least squares,
greedy descent never raises its objective, and the budget area on hand-made curves."""

import pytest
import torch

import stitchkit as sk
from stitchkit.measure.accumulator import run_pass
from stitchkit.measure.normal import NormalEquationsAccumulator
from stitchkit.stitch.frontier import (
    ChangeForm,
    Move,
    budget_area,
    budget_curve,
    frontier_points,
    greedy_moves,
    pair_moves,
)
from tests.helpers import random_sae
from tests.tolerances import EXACT_FP64


def problem():
    small = random_sae("relu", d_in=12, d_sae=20, seed=1, dtype=torch.float64)
    large = random_sae("relu", d_in=12, d_sae=45, seed=2, dtype=torch.float64)
    with torch.no_grad():
        large.W_dec[:20] = small.W_dec + 0.3 * torch.randn(
            20, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64
        )
        small.b_enc -= 6.0
        large.b_enc -= 6.0
    x = torch.randn(3000, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    acc = NormalEquationsAccumulator([small, large])
    run_pass([acc], list(x.split(700)), d_in=12, device=x.device)
    return small, large, x, ChangeForm(acc.result(), small, large)


def stitched(small, large, moves, form):
    kept, ins = form.columns(moves)
    parts = [(small, kept)] + ([(large, ins)] if len(ins) else [])
    return sk.SAE.from_features(parts, base=small)


def test_the_quadratic_form_is_the_measured_mse_and_l0():
    small, large, x, form = problem()
    assert form.base_mse == pytest.approx(sk.evaluate(small, x).mse, **EXACT_FP64)
    moves = [
        Move("a", torch.tensor([0, 3]), torch.tensor([0, 1, 2])),
        Move("b", torch.empty(0, dtype=torch.int64), torch.tensor([30])),
        Move("c", torch.tensor([7]), torch.empty(0, dtype=torch.int64)),
    ]
    for k in range(len(moves) + 1):
        mse, l0 = form.change(moves[:k])
        m = sk.evaluate(stitched(small, large, moves[:k], form), x)
        assert mse == pytest.approx(m.mse, **EXACT_FP64) and l0 == pytest.approx(m.l0, **EXACT_FP64)


def test_frontier_refits_are_the_least_squares_decoders_and_greedy_descends():
    small, large, x, form = problem()
    c = sk.classify(small, large, 0.7)
    groups = sk.swap_groups(small, large, 0.7)
    moves = pair_moves(c, groups)
    assert len(moves) == len(c.novel_features) + len(groups) > 3
    scale = form.base_mse / form.base_l0
    points = frontier_points(form, moves, [0.0, 0.5 * scale, 4 * scale])
    for p in points:
        m = sk.evaluate(p.sae, x)
        assert p.fit_mse == pytest.approx(m.mse, **EXACT_FP64) and p.fit_l0 == pytest.approx(
            m.l0, **EXACT_FP64
        )
        ls = sk.retrain_decoder(p.sae, x, method="lstsq").sae
        assert sk.evaluate(ls, x).mse == pytest.approx(m.mse, rel=1e-7)  # already the optimum
        assert p.fit_mse <= p.fit_mse_before + 1e-9
    for lam in (0.0, scale, 8 * scale):
        order = greedy_moves(form, moves, lam)
        changes = [form.change([moves[i] for i in order[:k]]) for k in range(len(order) + 1)]
        objective = [mse + lam * l0 for mse, l0 in changes]
        assert all(b < a for a, b in zip(objective, objective[1:]))  # each applied move lowered it
    # lambda 0: pure MSE descent, at least as good as the small SAE and inserting nothing raises
    assert points[0].fit_mse_before <= form.base_mse


def test_budget_curves_and_area_by_hand():
    natural = [(30.0, 30.0), (40.0, 25.0), (60.0, 22.0), (70.0, 23.0)]
    stitched_pts = [(35.0, 26.0), (50.0, 21.0), (45.0, 27.0)]
    assert budget_curve(natural) == [(30.0, 30.0), (40.0, 25.0), (60.0, 22.0)]
    a = budget_area(natural, stitched_pts)
    # budgets 35..50 (the smaller of the two largest L0s is 50): natural 30 on [35, 40), 25 on
    # [40, 50); stitched 26 on [35, 50): 4 * 5 - 1 * 10 = 10
    assert (a["l0_from"], a["l0_to"]) == (35.0, 50.0)
    assert a["area"] == pytest.approx(10.0) and a["mean_gap"] == pytest.approx(10.0 / 15)
    assert budget_area(natural, [(80.0, 1.0)])["area"] != budget_area(natural, [(80.0, 1.0)])["area"]  # NaN


def test_on_frontier_keeps_only_the_points_nothing_beats():
    from stitchkit.stitch.frontier import on_frontier

    # the toy demo's case: (3.21, 0.161) beats (3.47, 0.218) and (3.57, 0.179) on both axes
    pts = [(3.21, 0.161), (3.47, 0.218), (3.57, 0.179), (2.0, 0.5), (4.0, 0.1), (2.0, 0.5)]
    assert on_frontier(pts) == [True, False, False, True, True, True]  # equal points beat neither
    # brute force on random points: a point is kept iff nothing is at most it on both with one lower
    import random

    rng = random.Random(0)
    pts = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(60)]
    for p, keep in zip(pts, on_frontier(pts)):
        beaten = [q for q in pts if q[0] <= p[0] and q[1] <= p[1] and q != p]
        assert keep == (not beaten)
