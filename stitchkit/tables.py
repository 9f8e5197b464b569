"""The study's tables: one formatter (plain text for the terminal, GitHub markdown for report.md)
and the columns both use. Floats print to 4 significant digits."""

from __future__ import annotations

from typing import Literal

Columns = list[tuple[str, str]]  # (row key, title)

# fmt: off
FAMILY_COLUMNS = [("width", "d_sae"), ("mse", "MSE"), ("normalized_mse", "norm. MSE"), ("l0", "L0"),
                  ("dead_fraction", "dead frac"), ("train_s", "train s")]
DELTA_COLUMNS = [("cls", "class"), ("helps", "dMSE < 0"), ("hurts", "dMSE >= 0")]
ACTIVE_INACTIVE_COLUMNS = [("what", ""), ("small", "small SAE MSE"), ("large", "large SAE MSE"),
                           ("gap", "large - small")]
PATH_COLUMNS = [("step", "step"), ("label", "what"), ("n_features", "features"), ("mse", "MSE"),
                ("normalized_mse", "norm. MSE"), ("l0", "L0")]
SELECTION_COLUMNS = [("n", "features added"), ("greedy", "greedy MSE"), ("cosine", "cosine-rule MSE"),
                     ("base", "small alone")]
FRANKENSTEIN_COLUMNS = [("stage", "stage"), ("source", "added from"), ("n_added", "added"),
                        ("n_features", "features"), ("mse_before", "MSE before retrain"), ("mse", "MSE"),
                        ("l0", "L0"), ("reference", "nearest original"), ("reference_mse", "its MSE"),
                        ("reference_l0", "its L0")]
REFIT_COLUMNS = [("method", "method"), ("mse", "MSE"), ("seconds", "seconds")]
DOWNSTREAM_COLUMNS = [("sae", "SAE"), ("mean_cos", "mean cos"), ("min_cos", "min cos"),
                      ("zero_ablation_cos", "zero-ablated"), ("ce_recovered", "CE recovered (causal LMs)")]
# fmt: on


def pair_columns(threshold: float) -> Columns:
    """The novel-fraction table's columns, titled with the threshold the study used."""
    return [
        ("pair", "large vs small"),
        ("novel", f"novel (<= {threshold:g})"),
        ("novel_fraction", "fraction"),
        ("median_max_cos", "median max cos"),
    ]


def cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: list[dict], columns: Columns, style: Literal["text", "markdown"] = "text") -> str:
    """`rows` under `columns`: right-aligned plain text, or a GitHub-markdown table. A key a row
    lacks prints empty."""
    head = [title for _, title in columns]
    body = [[cell(r.get(k, "")) for k, _ in columns] for r in rows]
    if style == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    cells = [head] + body
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
