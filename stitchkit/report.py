"""report.md and its PNG plots from a study's results (StudyResult.to_dict(), the content of
results.json). Reads numbers, writes files; computes nothing of its own."""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_write
from .stitch.rules import DEFAULT_THRESHOLD
from .tables import (
    ACTIVE_INACTIVE_COLUMNS,
    DELTA_COLUMNS,
    DOWNSTREAM_COLUMNS,
    FAMILY_COLUMNS,
    FRANKENSTEIN_COLUMNS,
    PATH_COLUMNS,
    REFIT_COLUMNS,
    SELECTION_COLUMNS,
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
    return made


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_report(res: dict, out_dir: str | Path) -> Path:
    """Write out_dir/report.md (and its PNGs) from `res`; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(res, out)
    s = res.get("setup", {})
    title = f": {s['model']} at `{s.get('hook_name', '?')}`" if "model" in s else ""
    parts = [f"# stitchkit report{title}", ""]
    parts.append(
        " ".join(f"{k}: {v}." for k, v in s.items() if k not in ("model", "hook_name"))
        + " Units: MSE is the squared error summed over d_in, mean over tokens; L0 the active"
        " features per token; normalised MSE = MSE / variance (fraction of variance unexplained)."
    )
    threshold = res.get("scatter", {}).get("threshold", DEFAULT_THRESHOLD)
    sections = [
        ("The SAE family (held-out tokens)", "family", FAMILY_COLUMNS),
        ("Novel features against the next smaller SAE", "pairs", pair_columns(threshold)),
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
    for title, key, cols in sections:
        rows = res.get(key) or (res.get("interpolation") if key == "interpolation_shown" else None)
        if not rows:
            continue
        if isinstance(rows, dict):
            rows = [rows]
        parts += ["", f"## {title}", "", md_table(rows, cols)]
        note = res.get("notes", {}).get(key)
        if note:
            parts += ["", note]
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    atomic_write(path, lambda fh: fh.write(("\n".join(parts) + "\n").encode()))
    return path
