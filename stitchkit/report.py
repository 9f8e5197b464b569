"""report.md and its PNG plots from a study's results (StudyResult.to_dict(), the content of
results.json). Reads numbers, writes files; computes nothing of its own."""

from __future__ import annotations

from pathlib import Path

from .atomic import REPORT_MARK, WRITTEN_BY, atomic_write
from .reference import reference_rows
from .stitch.rules import DEFAULT_THRESHOLD
from .tables import (
    ACTIVE_INACTIVE_COLUMNS,
    CALIBRATION_COLUMNS,
    CONVERGENCE_COLUMNS,
    DELTA_COLUMNS,
    DOWNSTREAM_COLUMNS,
    FAMILY_COLUMNS,
    FRANKENSTEIN_COLUMNS,
    FRONTIER_COLUMNS,
    GROUND_TRUTH_COLUMNS,
    LINEAGE_COLUMNS,
    NATURAL_COLUMNS,
    PATH_COLUMNS,
    REFERENCE_COLUMNS,
    REFIT_COLUMNS,
    SELECTION_COLUMNS,
    STUDY_PAIR_COLUMNS,
    calibration_rows,
    pair_columns,
    table,
)


def md_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A GitHub-markdown table of `rows` with (key, title) columns (tables.table)."""
    return table(rows, columns, "markdown")


def _plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    sc = res.get("scatter")
    if sc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for cls, color in (("novel", "tab:blue"), ("reconstruction", "tab:red")):
            pts = [
                (c, d)
                for c, d, n in zip(sc["max_cos"], sc["delta_mse"], sc["novel"])
                if n == (cls == "novel")
            ]
            if pts:
                ax.scatter(*zip(*pts), s=4, alpha=0.5, color=color, label=cls)
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(sc["threshold"], color="k", lw=0.5, ls="--")
        ax.set(
            xlabel="max decoder cosine to the small SAE", ylabel="dMSE when inserted alone", title=sc["title"]
        )
        ax.legend()
        made.append(_save(fig, out / "dmse_vs_max_cosine.png"))
    cv = res.get("insertion_curves")
    if cv:
        fig, ax = plt.subplots(figsize=(6, 4))
        for cls, c in cv.items():
            ax.plot(c["k"], c["mse"], marker=".", label=cls)
        ax.set(xlabel="features inserted (increasing max cosine)", ylabel="MSE", title="cumulative insertion")
        ax.legend()
        made.append(_save(fig, out / "insertion_curves.png"))
    path = res.get("interpolation")
    if path:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        nf = [r["n_features"] for r in path]
        a1.plot(nf, [r["mse"] for r in path], marker=".")
        a2.plot(nf, [r["l0"] for r in path], marker=".", color="tab:green")
        a1.set(xlabel="features", ylabel="MSE", title="interpolation: MSE")
        a2.set(xlabel="features", ylabel="L0", title="interpolation: L0")
        made.append(_save(fig, out / "interpolation.png"))
    fr = res.get("frankenstein")
    if fr:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([s["l0"] for s in fr], [s["mse"] for s in fr], marker="o", label="Frankenstein stages")
        fam = res.get("family", [])
        ax.plot([r["l0"] for r in fam], [r["mse"] for r in fam], marker="s", ls="--", label="original SAEs")
        for s in fr:
            ax.annotate(str(s["n_features"]), (s["l0"], s["mse"]), fontsize=7)
        ax.set(xlabel="L0", ylabel="MSE", title="Frankenstein vs original SAEs", yscale="log")
        ax.legend()
        made.append(_save(fig, out / "frankenstein.png"))
    made += _calibration_plots(res, out, plt)
    if res.get("lineage"):
        made.append(_lineage_plot(res["lineage"], out, plt))
    if res.get("frontier"):
        made.append(_frontier_plot(res, out, plt))
    return made


def _calibration_plots(res: dict, out: Path, plt) -> list[str]:
    """One ROC plot per similarity measure, a curve per pair (the seed pair dashed)."""
    made = []
    cal = res.get("calibration") or {}
    for measure, title in (("decoder", "max decoder cosine"), ("activation", "max activation similarity")):
        curves = {pair: by[measure] for pair, by in cal.items() if measure in by}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(5, 5))
        for pair, c in curves.items():
            if c["auroc"] != c["auroc"]:  # NaN: one class empty, so there is no curve to draw
                ax.plot([], [], ls="none", label=f"{pair}: {undefined_auroc(c)}")
                continue
            ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], ls="--" if "seed" in pair else "-",
                    label=f"{pair}: AUROC {c['auroc']:.3f}, best t {c['best_threshold']:.2f}")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="k", lw=0.5)
        ax.set(xlabel="false positive rate (hurting features called novel)",
               ylabel="true positive rate (helping features called novel)",
               title=f"{title} <= t predicts 'inserting helps'")  # fmt: skip
        ax.legend(fontsize=7)
        made.append(_save(fig, out / f"calibration_{measure}.png"))
    return made


def frontier_note(stitched: list[dict]) -> str:
    """What the frontier table's last column means, with its count."""
    on = sum(1 for r in stitched if r.get("on_frontier", True))
    return (
        f"{on} of {len(stitched)} stitched SAEs are on the frontier: no other has both a lower or "
        "equal L0 and a lower or equal MSE. The plot joins only those. Each lambda's greedy descent "
        "stops at its own local optimum, so another lambda's SAE can beat it on both axes; the "
        "greedy points bound the true trade-off from above, they do not trace it exactly."
    )


def undefined_auroc(c: dict) -> str:
    """Why a calibration has no AUROC: every measured feature helps, or every one hurts."""
    helps, hurts = c.get("n_helps", 0), c.get("n_hurts", 0)
    if helps == 0 and hurts == 0:
        return "AUROC undefined (no feature measured)"
    side = f"all {helps} inserted features help" if hurts == 0 else f"all {hurts} inserted features hurt"
    return f"AUROC undefined ({side}: no other class to rank against)"


def _lineage_plot(lin: dict, out: Path, plt) -> str:
    """Event counts per rung (stacked), and the largest tree across the ladder."""
    from .stitch.lineage import EVENTS

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0] * len(lin["counts"])
    labels = [c["pair"] for c in lin["counts"]]
    for ev in EVENTS:
        vals = [c[ev] for c in lin["counts"]]
        a1.bar(labels, vals, bottom=bottom, label=ev)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a1.set(ylabel="events (components of the rung's link graph)", title="lineage events per rung")
    a1.legend(fontsize=7)
    if lin.get("trees"):
        tree = lin["trees"][0]
        by_level: dict[int, list[int]] = {}
        for level, idx in tree["features"]:
            by_level.setdefault(level, []).append(idx)
        pos = {}
        for level, idxs in by_level.items():
            for k, idx in enumerate(sorted(idxs)):
                pos[(level, idx)] = (level, k - (len(idxs) - 1) / 2)
        for level, child, parent, cos in tree["links"]:
            (x0, y0), (x1, y1) = pos[(level - 1, parent)], pos[(level, child)]
            a2.plot([x0, x1], [y0, y1], color="tab:gray", lw=0.5 + 2 * max(cos - 0.7, 0) / 0.3)
        xs, ys = zip(*pos.values())
        a2.scatter(xs, ys, s=12, zorder=3)
        a2.set_xticks(range(len(lin["widths"])), [str(w) for w in lin["widths"]])
        a2.set(xlabel="d_sae", yticks=[], title=f"largest feature tree ({len(pos)} features)")
    return _save(fig, out / "lineage.png")


def _frontier_plot(res: dict, out: Path, plt) -> str:
    """The MSE-L0 plane: the family, the stitched frontier, the Frankenstein stages."""
    fr = res["frontier"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    nat = sorted((r["l0"], r["mse"], r["width"]) for r in fr["natural"])
    ax.plot([n[0] for n in nat], [n[1] for n in nat], marker="s", ls="--", label="the family")
    for l0, mse, w in nat:
        ax.annotate(str(w), (l0, mse), fontsize=7)
    # the frontier: the stitched points nothing beats on both axes, joined in L0 order; the greedy's
    # other points (beaten by another lambda's SAE) are drawn apart, not joined
    flags = [r.get("on_frontier", True) for r in fr["stitched"]]
    st = sorted((r["l0"], r["mse"]) for r, on in zip(fr["stitched"], flags) if on)
    ax.plot(*zip(*st), marker="o", label=f"stitched from {fr.get('pair', 'the pair')} (refit): frontier")
    beaten = [(r["l0"], r["mse"]) for r, on in zip(fr["stitched"], flags) if not on]
    if beaten:
        ax.scatter(*zip(*beaten), marker="o", facecolors="none", edgecolors="tab:gray",
                   label=f"stitched, beaten on both axes ({len(beaten)})")  # fmt: skip
    stages = res.get("frankenstein") or []
    if stages:
        ax.scatter([s["l0"] for s in stages], [s["mse"] for s in stages], marker="^", color="tab:red",
                   label="Frankenstein stages")  # fmt: skip
    gap = fr.get("mean_gap")
    title = "MSE-L0 frontier" + (f": mean gap {gap:+.3g} at equal L0" if gap == gap else "")
    ax.set(xlabel="L0", ylabel="MSE (held-out)", title=title)
    ax.legend(fontsize=7)
    return _save(fig, out / "frontier.png")


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, metadata={"Software": WRITTEN_BY})  # marks it as stitchkit's
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _with_derived_rows(res: dict) -> dict:
    """res with the rows its tables show that results.json keeps in another shape."""
    out = dict(
        res, reference=reference_rows(res), calibration_rows=calibration_rows(res.get("calibration") or {})
    )
    out["pair_rows"] = res.get("pairs", []) + ([res["seed_baseline"]] if res.get("seed_baseline") else [])
    if res.get("lineage"):
        out["lineage_counts"] = res["lineage"]["counts"]
    if res.get("frontier"):
        out["frontier_natural"], out["frontier_stitched"] = (
            res["frontier"]["natural"],
            res["frontier"]["stitched"],
        )
    return out


# Every file write_report may write (the CLI checks them before it replaces any).
REPORT_FILES = ("report.md", "dmse_vs_max_cosine.png", "insertion_curves.png", "interpolation.png",
                "frankenstein.png", "calibration_decoder.png", "calibration_activation.png", "lineage.png",
                "frontier.png")  # fmt: skip
# The keys of results.json a report has something to show for.
# The study's notes on a stage that ran another way, or not at all, for want of memory, by section.
MEMORY_NOTES = {"frontier_stitched": "frontier", "selection": "greedy"}

RESULT_KEYS = ("family", "pairs", "delta_table", "interpolation", "frankenstein", "selection", "scatter",
               "frontier", "lineage", "calibration", "convergence", "downstream")  # fmt: skip


def _sections(res: dict, threshold: float) -> list[tuple[str, str, list]]:
    """(title, key of the rows in res, columns) of every table a report shows, in order."""
    return [
        ("The SAE family (held-out tokens)", "family", FAMILY_COLUMNS),
        (
            "Training convergence (held-out MSE at 80% and 100% of each SAE's steps)",
            "convergence",
            CONVERGENCE_COLUMNS,
        ),
        (f"The reference work beside this run ({res.get('headline', '')})", "reference", REFERENCE_COLUMNS),
        ("Every adjacent pair (and the seed baseline)", "pair_rows", STUDY_PAIR_COLUMNS),
        ("Novel features against the next smaller SAE", "pairs", pair_columns(threshold)),
        (
            "Threshold calibration: similarity as a predictor of dMSE < 0",
            "calibration_rows",
            CALIBRATION_COLUMNS,
        ),
        ("Lineage across the width ladder (events per rung)", "lineage_counts", LINEAGE_COLUMNS),
        (
            "MSE-L0 frontier: stitched SAEs (headline pair, decoder refit)",
            "frontier_stitched",
            FRONTIER_COLUMNS,
        ),
        ("... beside the family", "frontier_natural", NATURAL_COLUMNS),
        (
            "Ground truth (toy data): what each class of the headline pair recovers of the planted "
            "directions (cos > 0.9; new: the large SAE has it, the small one does not)",
            "ground_truth",
            GROUND_TRUTH_COLUMNS,
        ),
        ("Inserting each large feature alone into the small SAE (exact dMSE)", "delta_table", DELTA_COLUMNS),
        ("Where novel features fire", "active_inactive", ACTIVE_INACTIVE_COLUMNS),
        (
            "Interpolation path (small -> +novel -> swaps in decreasing cosine)",
            "interpolation_shown",
            PATH_COLUMNS,
        ),
        ("Greedy exact-marginal selection vs the cosine rule", "selection", SELECTION_COLUMNS),
        ("Frankenstein assembly (decoder retrained, encoder frozen)", "frankenstein", FRANKENSTEIN_COLUMNS),
        ("Decoder refit: least squares vs Adam (final Frankenstein stage)", "refit", REFIT_COLUMNS),
        ("Splicing each SAE into the model", "downstream", DOWNSTREAM_COLUMNS),
    ]


def write_report(res: dict, out_dir: str | Path) -> Path:
    """Write out_dir/report.md (and its PNGs) from `res`; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(res, out)
    s = res.get("setup", {})
    res = _with_derived_rows(res)
    title = f": {s['model']} at `{s.get('hook_name', '?')}`" if "model" in s else ""
    parts = [REPORT_MARK, f"# stitchkit report{title}", ""]
    parts.append(
        " ".join(f"{k}: {v}." for k, v in s.items() if k not in ("model", "hook_name"))
        + " Units: MSE is the squared error summed over d_in, mean over tokens; L0 the active"
        " features per token; normalised MSE = MSE / variance (fraction of variance unexplained)."
    )
    threshold = res.get("scatter", {}).get("threshold", DEFAULT_THRESHOLD)
    sections = _sections(res, threshold)
    notes = res.get("notes", {})
    for title, key, cols in sections:
        rows = res.get(key) or (res.get("interpolation") if key == "interpolation_shown" else None)
        # A stage that ran another way, or not at all, for want of memory says so (study notes).
        memory = notes.get(MEMORY_NOTES.get(key, ""))
        if not rows:
            if memory:
                parts += ["", f"## {title}", "", memory]
            continue
        if isinstance(rows, dict):
            rows = [rows]
        parts += ["", f"## {title}", "", md_table(rows, cols)]
        if key == "frontier_stitched":
            parts += ["", frontier_note(rows)]
        for note in (notes.get(key), memory):
            if note:
                parts += ["", note]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    atomic_write(path, lambda fh: fh.write(("\n".join(parts) + "\n").encode()))
    return path


def study_view(res: dict) -> dict:
    """The tables and plot data of a study (results.json's dict) for report.html (report_html.py):
    {"tables": [{"title", "columns": [[key, title]...], "rows", "note"}], "plots": {"scatter",
    "interpolation", "frontier"}}; the same tables report.md shows, with raw values."""
    threshold = res.get("scatter", {}).get("threshold", DEFAULT_THRESHOLD)
    derived = _with_derived_rows(res)
    notes = res.get("notes", {})
    tables = []
    for title, key, cols in _sections(derived, threshold):
        rows = derived.get(key) or (derived.get("interpolation") if key == "interpolation_shown" else None)
        if not rows:
            continue
        rows = [rows] if isinstance(rows, dict) else rows
        note = " ".join(n for n in (notes.get(key), notes.get(MEMORY_NOTES.get(key, ""))) if n) or None
        if key == "frontier_stitched":
            note = " ".join(n for n in (frontier_note(rows), note) if n)
        tables.append(dict(title=title, columns=[[k, t] for k, t in cols], rows=rows, note=note))
    sc = res.get("scatter")
    scatter = None
    if sc:
        scatter = dict(
            sae=None, features=list(range(len(sc["max_cos"]))), max_cos=sc["max_cos"], dmse=sc["delta_mse"],
            novel=sc["novel"], threshold=sc["threshold"], title=sc["title"],
        )  # fmt: skip
    interpolation = None
    if res.get("interpolation"):
        keys = ("step", "label", "mse", "l0", "n_features")
        interpolation = dict(rows=[{k: r.get(k) for k in keys} for r in res["interpolation"]])
    frontier = None
    if res.get("frontier"):
        fr = res["frontier"]

        def point(label, r, on, kind):
            return dict(label=str(label), mse=r["mse"], l0=r["l0"], on_frontier=bool(on), kind=kind)

        points = [point(r.get("name", r.get("width")), r, False, "family") for r in fr["natural"]]
        for r in fr["stitched"]:
            points.append(point(f"lambda {r.get('lam')}", r, r.get("on_frontier", True), "stitched"))
        stages = res.get("frankenstein") or []
        points += [point(f"Frankenstein stage {k}", st, False, "frankenstein") for k, st in enumerate(stages)]
        frontier = dict(points=points)
    return dict(tables=tables, plots=dict(scatter=scatter, interpolation=interpolation, frontier=frontier))
