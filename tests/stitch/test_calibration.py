"""Threshold calibration (stitchkit.stitch.calibration): AUROC against brute-force pair counting,
the best threshold where the classes separate, tables against the novelty rule, NaN handling; and
on the trained toy family, decoder cosine predicting "inserting helps" well above chance."""

import pytest
import torch

import stitchkit as sk
from stitchkit.stitch.calibration import auroc, calibrate
from stitchkit.stitch.rules import SWEEP_THRESHOLDS, is_novel


def brute_auroc(score, pos):
    a, b = score[pos].double(), score[~pos].double()
    wins = (a[:, None] > b[None, :]).double() + 0.5 * (a[:, None] == b[None, :]).double()
    return float(wins.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_is_the_pair_count_with_ties_halved(seed):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 12, (300,), generator=g).double()  # many ties
    pos = torch.rand(300, generator=g) < 0.3
    assert auroc(score, pos) == pytest.approx(brute_auroc(score, pos), abs=1e-12)
    assert auroc(score, torch.zeros(300, dtype=torch.bool)) != auroc(
        score, torch.zeros(300, dtype=torch.bool)
    )


def test_separable_measure_finds_the_gap():
    sim = torch.tensor([0.1, 0.2, 0.35, 0.5, 0.75, 0.8, 0.9, float("nan")])
    dmse = torch.tensor([-1.0, -2.0, -0.5, -0.1, 0.3, 0.2, 0.1, -5.0])
    c = calibrate(sim, dmse, "decoder cosine")
    assert c.auroc == 1.0 and c.best_j == 1.0 and c.best_threshold == pytest.approx(0.5)
    assert (c.n_helps, c.n_hurts, c.n_undefined) == (4, 3, 1)
    for row in c.tables:
        nov = is_novel(sim[:-1], row["threshold"])
        helps = dmse[:-1] < 0
        assert row["novel_helps"] == int((nov & helps).sum())
        assert row["recon_hurts"] == int((~nov & ~helps).sum())
    assert [r["threshold"] for r in c.tables] == list(SWEEP_THRESHOLDS)
    fpr, tpr = c.roc
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert calibrate(-sim, dmse, "reversed").auroc == 0.0


def test_on_the_toy_family_decoder_cosine_predicts_insertion_well_above_chance():
    toy = sk.make_toy(d_in=32, n_parents=16, children_per_parent=2, n_rare=16, child_cosine=0.8,
                      p_parent=0.05, p_rare=0.01, seed=0)  # fmt: skip
    small = sk.train_sae(toy.batches(120_000, 512, seed=1), 32, 16, l1_coefficient=0.2, lr=3e-3,
                         n_steps=235, seed=16)  # fmt: skip
    large = sk.train_sae(toy.batches(120_000, 512, seed=1), 32, 64, l1_coefficient=0.2, lr=3e-3,
                         n_steps=235, seed=64)  # fmt: skip
    held = toy.sample(8000, seed=10_000)
    c = sk.classify(small, large)
    cal = calibrate(c.max_cos, sk.marginal_delta_mse(small, large, held), "decoder cosine")
    assert cal.auroc > 0.75  # the stated margin: far from chance (0.5)
    assert 0.3 <= cal.best_threshold <= 0.95
