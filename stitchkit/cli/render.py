"""Printing a StudyResult on the terminal (report.py renders the same result as markdown)."""

from __future__ import annotations

import sys
import time

from ..reference import reference_rows
from ..tables import (
    CALIBRATION_COLUMNS,
    DELTA_COLUMNS,
    FRANKENSTEIN_COLUMNS,
    FRONTIER_COLUMNS,
    LINEAGE_COLUMNS,
    PATH_COLUMNS,
    REFERENCE_COLUMNS,
    STUDY_PAIR_COLUMNS,
    calibration_rows,
    pair_columns,
    table,
)


def bar(total: int, desc: str):
    from tqdm import tqdm

    from .. import dist

    return tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr, disable=not dist.is_main())


def family_progress(steps_of):
    """A train_family progress callback drawing one bar per width, and the dict it fills with each
    trained width's seconds (widths loaded from disk are not trained and do not appear)."""
    bars, started, seconds = {}, {}, {}

    def progress(width, step, loss):
        if width not in bars:
            bars[width] = bar(steps_of(width), f"train d_sae={width}")
            started[width] = time.perf_counter()
        bars[width].update(1)
        if step == steps_of(width):
            bars[width].close()
            seconds[width] = time.perf_counter() - started[width]

    return progress, seconds


def say(message: str) -> None:
    from .. import dist

    if dist.is_main():
        print("  " + message, file=sys.stderr)


def print_study(study, res: dict) -> None:
    """The study's findings in the order the reference work presents them; `res` is
    study.to_dict() (the numbers results.json holds)."""
    c, t = study.classification, study.config.threshold
    small, large = study.small, study.large
    print("\nNovel features of each SAE against the next smaller one:")
    print(table(res["pairs"], pair_columns(t)))
    print(f"\n== {large.name} against {small.name} (threshold {t}) ==")
    print(
        f"{int(c.novel.sum())} novel and {int((~c.novel).sum())} reconstruction features. "
        "Inserting each alone into the small SAE (exact dMSE):"
    )
    print(table(res["delta_table"], DELTA_COLUMNS))
    if study.active_inactive is not None:
        ai = study.active_inactive
        print(
            f"Where a novel feature fires, large - small MSE = {ai['gap_active']:+.4g} "
            f"(elsewhere {ai['gap_inactive']:+.4g}), mean over {ai['n_features']} novel features."
        )
    print("Cumulative insertion (in increasing max cosine): MSE after adding k features of each class")
    rows = [
        dict(
            cls=cls,
            path=" -> ".join(
                f"{e:.4g} (k={k})" for k, e in list(zip(cv["k"], cv["mse"]))[:: max(1, len(cv["k"]) // 4)]
            ),
        )
        for cls, cv in res["insertion_curves"].items()
    ]
    print(table(rows, [("cls", "class"), ("path", "MSE (k added)")]))
    if "interpolation_shown" in study.notes:
        print(study.notes["interpolation_shown"])
    print("\nInterpolation path (small -> +novel -> swaps in decreasing cosine):")
    print(table(res["interpolation_shown"], PATH_COLUMNS))
    pn = study.plus_novel
    print(
        f"Built {pn.name} ({pn.d_sae} features): MSE {study.plus_novel_metrics.mse:.4g}, "
        f"path step 1 says {float(study.interpolation.mse[1]):.4g}."
    )
    if study.swapped is not None:
        g = study.groups[study.swaps.best]
        print(
            f"Built {study.swapped.name}: parents {g.parents.tolist()} -> children {g.children.tolist()}, "
            f"MSE {study.swaps.best_mse:.4g}, L0 {study.swaps.best_l0:.4g} (from its exact swap deltas)."
        )
    if "selection" in res:
        at = res["selection"][0]
        print(
            f"\nGreedy exact-marginal selection vs the cosine rule, {at['n']} features each: MSE "
            f"{at['greedy']:.4g} vs {at['cosine']:.4g} (small alone {at['base']:.4g})."
        )
    print(study.notes["selection"])
    print("\n== Frankenstein assembly (decoder retrained with Adam, encoder frozen) ==")
    print(table(res["frankenstein"], FRANKENSTEIN_COLUMNS))
    if "refit" in res:
        ls, adam = res["refit"]
        print(
            f"Least-squares refit of the final decoder: MSE {ls['mse']:.4g} in {ls['seconds']:.2f} s, "
            f"vs Adam's {adam['mse']:.4g} in {adam['seconds']:.2f} s (last stage)."
        )
    print_beyond(res)
    print(f"(every measurement above: {study.n_passes} pass over the held-out tokens)")


def print_beyond(res: dict) -> None:
    """Every pair, the seed baseline, calibration, lineage, the frontier and the reference work
    beside this run."""
    pairs = res["pairs"] + ([res["seed_baseline"]] if res.get("seed_baseline") else [])
    print("\n== Every adjacent pair" + (" and the seed baseline" if res.get("seed_baseline") else "") + " ==")
    print(table(pairs, STUDY_PAIR_COLUMNS))
    print("\n== Threshold calibration: similarity <= t as a predictor of 'inserting alone lowers MSE' ==")
    print(table(calibration_rows(res.get("calibration") or {}), CALIBRATION_COLUMNS))
    if res.get("lineage"):
        print("\n== Lineage across the width ladder ==")
        print(table(res["lineage"]["counts"], LINEAGE_COLUMNS))
    if res.get("frontier"):
        fr = res["frontier"]
        print(f"\n== MSE-L0 frontier of SAEs stitched from {fr.get('pair')} (decoder refit) ==")
        print(table(fr["stitched"], FRONTIER_COLUMNS))
        print(
            f"Against the family at equal L0 (budget curves, L0 {fr['l0_from']:.3g}..{fr['l0_to']:.3g}): "
            f"area {fr['area']:+.4g}, mean MSE gap {fr['mean_gap']:+.4g} (positive: stitching wins)."
        )
    rows = reference_rows(res)
    if rows:
        print(f"\n== The reference work beside this run ({res['headline']}) ==")
        print(table(rows, REFERENCE_COLUMNS))
