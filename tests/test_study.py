"""The study as a library call (stitchkit.study): every measurement in ONE pass over the held-out
tokens, each equal to the same measurement made on its own."""

import json

import pytest
import torch

from stitchkit import (
    StudyConfig,
    activation_similarity,
    evaluate,
    frankenstein,
    greedy_selection,
    insertion_curve,
    interpolate,
    marginal_delta_mse,
    retrain_decoder,
    run_study,
    swap_delta,
)
from tests.helpers import random_sae

EXACT = dict(rel=1e-12, abs=1e-15)


@pytest.fixture(scope="module")
def family():
    saes = [random_sae(d_in=9, d_sae=w, seed=w, name=f"r{w}") for w in (29, 6, 13)]  # any order
    with torch.no_grad():
        for s in saes:
            s.b_enc.sub_(1.5)  # sparse, as a trained SAE
            s.W_dec.div_(s.W_dec.norm(dim=1, keepdim=True))
        # Children of the 6-wide SAE's rows in the wider ones, so there are links and swaps.
        g = torch.Generator().manual_seed(0)
        for s in saes:
            if s.d_sae > 6:
                s.W_dec[:6] = saes[1].W_dec + 0.3 * torch.randn(6, 9, generator=g)
    g = torch.Generator().manual_seed(1)
    held = list((torch.randn(900, 9, generator=g) * 2).split(200))
    train = list((torch.randn(1200, 9, generator=g) * 2).split(300))
    return saes, held, train


def test_the_study_makes_one_pass_and_matches_each_measurement_alone(family):
    saes, held, train = family
    passes = []

    def held_stream():  # counts the passes made over the held-out tokens
        passes.append(1)
        return iter(held)

    config = StudyConfig(threshold=0.7, small=0, large=2, curve_points=5, retrain_lr=1e-2)
    res = run_study(saes, held_stream, train, config)
    assert res.n_passes == 1 and len(passes) == 1

    small, large = res.small, res.large
    assert [s.d_sae for s in res.saes] == [6, 13, 29] and (small.d_sae, large.d_sae) == (6, 29)
    for sae, m in zip(res.saes, res.family):
        assert m.mse == pytest.approx(evaluate(sae, held).mse, **EXACT)
    assert torch.equal(res.delta_mse, marginal_delta_mse(small, large, held))
    path = interpolate(small, large, held, 0.7)
    assert res.interpolation_labels == path.labels and len(res.groups) == len(path.groups) > 0
    assert torch.equal(res.interpolation.mse, path.metrics.mse) and torch.equal(
        res.interpolation.l0, path.metrics.l0
    )
    sd, sl = swap_delta(small, large, [(g.children, g.parents) for g in path.groups], held)
    assert torch.equal(res.swaps.delta_mse, sd) and torch.equal(res.swaps.delta_l0, sl)
    swapped = evaluate(res.swapped, held)
    assert res.swaps.best_mse == pytest.approx(swapped.mse, rel=1e-5)  # from the exact deltas
    assert res.swaps.best_l0 == pytest.approx(swapped.l0, rel=1e-9)
    c = res.classification
    novel = c.novel_features[torch.argsort(c.max_cos[c.novel_features], stable=True)]
    assert torch.equal(res.curves["novel"].mse, insertion_curve(small, large, novel, held, points=5).mse)
    act = activation_similarity(large, small, held)
    assert torch.equal(res.activation.indices, act.indices)
    torch.testing.assert_close(res.activation.values, act.values, equal_nan=True, rtol=0, atol=0)
    sel = greedy_selection(small, large, held, threshold=0.7)
    assert torch.equal(res.selection.greedy, sel.greedy) and torch.equal(
        res.selection.cosine_mse, sel.cosine_mse
    )
    assert res.plus_novel_metrics.mse == pytest.approx(float(path.metrics.mse[1]), rel=1e-5)

    fr = frankenstein(saes, train, 0.7, retrain="adam", lr=1e-2, eval_acts=held)
    for got, want in zip(res.frankenstein.stages, fr.stages):
        g, w = vars(got), vars(want)
        g.pop("retrain_seconds"), w.pop("retrain_seconds")
        assert g == w
    assert res.frankenstein.sae.name == "frankenstein"
    ls = retrain_decoder(res.frankenstein.sae, train, method="lstsq")
    assert res.refit["mse"] == pytest.approx(evaluate(ls.sae, held).mse, **EXACT)


def test_every_pair_the_seed_baseline_lineage_and_frontier_in_the_one_pass(family):
    from stitchkit.stitch.calibration import calibrate
    from stitchkit.stitch.lineage import lineage

    saes, held, train = family
    twin = random_sae(d_in=9, d_sae=29, seed=99, name="r29-seed99")
    with torch.no_grad():
        twin.b_enc.sub_(1.5)
        twin.W_dec[:20] = saes[0].W_dec[:20] + 0.1 * torch.randn(
            20, 9, generator=torch.Generator().manual_seed(5)
        )
    passes = []

    def held_stream():
        passes.append(1)
        return iter(held)

    config = StudyConfig(threshold=0.7, small=1, large=2, curve_points=5, retrain_lr=1e-2)
    res = run_study(saes, held_stream, train, config, seed_twin=twin)
    assert res.n_passes == 1 and len(passes) == 1
    fam = res.saes
    assert [p.pair for p in res.pairs] == ["13 vs 6", "29 vs 13"]  # the headline is adjacent
    for p, (a, b) in zip(res.pairs, zip(fam, fam[1:])):
        dmse = marginal_delta_mse(a, b, held)
        path = interpolate(a, b, held, 0.7)
        assert p.table.novel_helps + p.table.novel_hurts == p.novel
        assert p.mse_plus_novel == pytest.approx(float(path.metrics.mse[1]), rel=1e-5)
        assert p.path_end == pytest.approx(float(path.metrics.mse[-1]), rel=1e-9)
        want = calibrate(path.classification.max_cos, dmse, "decoder cosine")
        assert p.calibration["decoder"].auroc == pytest.approx(want.auroc, abs=1e-12)
    sb = res.seed_baseline
    assert sb.kind == "seed" and sb.pair == "29 vs 29 (seed)" and sb.n_large == 29
    dmse = marginal_delta_mse(fam[2], twin, held)
    assert sb.table.novel_helps + sb.table.recon_helps == int((dmse < 0).sum())
    assert sb.mse_large == pytest.approx(evaluate(twin, held).mse, **EXACT)
    alone = lineage(fam, 0.7)
    assert [r.events for r in res.lineage.rungs] == [r.events for r in alone.rungs]
    assert res.frontier is not None and res.frontier.stitched
    for row, sae in zip(res.frontier.stitched, res.frontier.saes):  # measured in the one pass
        m = evaluate(sae, held)
        assert row["mse"] == pytest.approx(m.mse, **EXACT) and row["l0"] == pytest.approx(m.l0, **EXACT)
    d = res.to_dict()
    assert set(d["calibration"]) == {"13 vs 6", "29 vs 13", "29 vs 29 (seed)"}
    assert {"auroc", "best_threshold"} <= set(d["calibration"]["29 vs 13"]["decoder"])
    assert d["seed_baseline"]["pair"] == "29 vs 29 (seed)" and d["lineage"]["widths"] == [6, 13, 29]
    assert set(d["frontier"]) >= {"natural", "stitched", "area"}


def test_results_dict_is_json_and_titled_by_the_threshold(family, tmp_path):
    from stitchkit.report import write_report

    saes, held, train = family
    res = run_study(saes, torch.cat(held), train, StudyConfig(threshold=0.6, retrain_lr=1e-2))
    d = json.loads(json.dumps(res.to_dict(dict(model="random", hook_name="none"), path_rows=5)))
    assert list(d)[:3] == ["setup", "family", "pairs"] and d["scatter"]["threshold"] == 0.6
    assert len(d["interpolation_shown"]) <= 6 and d["interpolation_shown"][-1]["step"] == "-"
    assert sum(r["helps"] + r["hurts"] for r in d["delta_table"]) == res.large.d_sae
    report = write_report(d, tmp_path).read_text()
    assert "novel (<= 0.6)" in report and "novel (<= 0.7)" not in report


def test_bad_configuration_is_refused_before_any_work(family):
    from stitchkit import InvalidArgumentError

    saes, held, train = family
    calls = []
    for config, message in [
        (StudyConfig(small=5), "small must index the 3 SAEs"),
        (StudyConfig(small=2, large=0), "must be narrower"),
        (StudyConfig(threshold=1.0), "threshold must lie in"),
        (StudyConfig(curve_points=0), "curve_points must be >= 1"),
        (StudyConfig(refit_max_iter=0), "refit_max_iter >= 1"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            run_study(saes, lambda: calls.append(1) or iter(held), train, config)
    assert not calls


def test_long_passes_report_their_progress_with_the_time_left():
    """The study's long loops speak through progress(message): the rate, and the time left where
    the total is known (a tensor or a list of them)."""
    from stitchkit.progress import Ticker, tokens_in

    said, now = [], [0.0]
    total = tokens_in([torch.zeros(300, 4), torch.zeros(700, 4)])
    tick = Ticker(said.append, "held-out pass", total, "tokens")
    tick.clock, tick.t0, tick.last = (lambda: now[0]), 0.0, 0.0
    now[0] = 2.0
    tick(100)  # within `every` seconds of the start: silent
    now[0] = 10.0
    tick(250)
    assert said == ["held-out pass: 250 tokens of 1,000 (25%), ~30 s left, 25.0 tokens/s"]
    assert tokens_in(lambda: iter(())) is None


def test_stages_whose_dense_form_does_not_fit_run_sparse_with_the_same_results(family, monkeypatch, tmp_path):
    """Under a memory budget too small for the greedy Gram and the frontier's dense change form,
    the study runs both on the sparse co-firing form (stitch.sparse_form): the same picks and
    frontier points as the dense forms, and it says so in its notes, results.json and report."""
    import stitchkit.study as study
    from stitchkit.measure.gram import gram_bytes
    from stitchkit.report import write_report

    saes, held, train = family
    config = StudyConfig(threshold=0.7, small=1, large=2, curve_points=5, retrain_lr=1e-2)
    full = run_study(saes, held, train, config)
    assert full.frontier.area["algorithm"] == "dense normal equations" and not full.notes.get("frontier")
    monkeypatch.setattr(study, "stage_memory", lambda device: gram_bytes(28))
    said = []
    res = run_study(saes, held, train, config, progress=said.append)
    assert "sparse co-firing form" in res.notes["frontier"] and "sparse co-firing form" in res.notes["greedy"]
    assert any(m == res.notes["frontier"] for m in said) and any(m == res.notes["greedy"] for m in said)
    assert res.frontier.area["algorithm"] == "sparse co-firing form"
    assert torch.equal(res.selection.greedy, full.selection.greedy)
    torch.testing.assert_close(res.selection.greedy_mse, full.selection.greedy_mse, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(res.selection.cosine_mse, full.selection.cosine_mse, rtol=1e-6, atol=1e-9)
    assert len(res.frontier.stitched) == len(full.frontier.stitched)
    for a, b in zip(res.frontier.stitched, full.frontier.stitched):
        keys = ("n_inserted", "n_removed", "n_swaps")
        assert [a[k] for k in keys] == [b[k] for k in keys]
        assert a["fit_mse"] == pytest.approx(b["fit_mse"], rel=1e-6)
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-5) and a["l0"] == pytest.approx(b["l0"], rel=1e-9)
    d = json.loads(json.dumps(res.to_dict(dict(model="random", hook_name="none"))))
    assert d["frontier"]["algorithm"] == "sparse co-firing form" and set(d["notes"]) >= {"greedy", "frontier"}
    report = write_report(d, tmp_path).read_text()
    assert res.notes["frontier"] in report and res.notes["greedy"] in report
