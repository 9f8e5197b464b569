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
STUDY_PAIR_COLUMNS = [("pair", "large vs small"), ("novel_fraction", "novel frac"),
                      ("novel_helps", "novel help"), ("novel_hurts", "novel hurt"),
                      ("recon_helps", "recon help"), ("recon_hurts", "recon hurt"),
                      ("mse_small", "small MSE"), ("mse_plus_novel", "+all novel"),
                      ("plus_novel_change", "change"), ("n_groups", "swaps"),
                      ("swaps_lower_l0", "lower L0"), ("swaps_raise_mse", "raise MSE"),
                      ("path_end", "path end MSE"), ("mse_large", "large MSE"),
                      ("auroc_decoder", "AUROC dec."), ("auroc_activation", "AUROC act.")]
CALIBRATION_COLUMNS = [("pair", "pair"), ("measure", "measure"), ("auroc", "AUROC"),
                       ("best_threshold", "best threshold"), ("best_j", "Youden J"),
                       ("n_helps", "help"), ("n_hurts", "hurt"), ("n_undefined", "undefined")]
LINEAGE_COLUMNS = [("pair", "rung"), ("persist", "persist (cos > 0.9)"), ("drift", "drift"),
                   ("split", "split"), ("merge", "merge"), ("tangle", "tangle"), ("appear", "appear"),
                   ("vanish", "vanish")]
FRONTIER_COLUMNS = [("lam", "lambda"), ("n_features", "features"), ("n_inserted", "inserted"),
                    ("n_removed", "removed"), ("n_swaps", "swaps"), ("l0", "L0"), ("mse", "MSE"),
                    ("fit_mse_before_refit", "fit MSE before refit"), ("fit_mse", "fit MSE"),
                    ("on_frontier", "on the frontier")]
GROUND_TRUTH_COLUMNS = [("cls", "class"), ("features", "features"), ("match_new", "match a new direction"),
                        ("match_old", "match one the small SAE has"), ("match_none", "match none"),
                        ("precision", "precision (new)"), ("new_child", "new split children"),
                        ("recall_child", "recall (children)"), ("new_rare", "new rare directions"),
                        ("recall_rare", "recall (rare)")]
NATURAL_COLUMNS = [("name", "SAE"), ("width", "d_sae"), ("l0", "L0"), ("mse", "MSE")]
REFERENCE_COLUMNS = [("finding", "finding"), ("reference", "reference (GPT2-1536 vs 768)"),
                     ("this_run", "this run (headline pair)"), ("verdict", "verdict")]
CONVERGENCE_COLUMNS = [("name", "SAE"), ("width", "d_sae"), ("steps", "steps"), ("train_s", "train s"),
                       ("mse_at_80", "MSE at 80%"), ("mse", "MSE at 100%"),
                       ("last_fifth", "last fifth change")]
# fmt: on


def calibration_rows(calibration: dict) -> list[dict]:
    """One row per (pair, measure) of results.json's "calibration"."""
    return [dict(pair=pair, **{k: v for k, v in c.items() if k not in ("tables", "roc")})
            for pair, by in calibration.items() for c in by.values()]  # fmt: skip


def pair_columns(threshold: float) -> Columns:
    """The novel-fraction table's columns, titled with the threshold the study used."""
    return [
        ("pair", "large vs small"),
        ("novel", f"novel (<= {threshold:g})"),
        ("novel_fraction", "fraction"),
        ("median_max_cos", "median max cos"),
    ]


def cell(v) -> str:
    if isinstance(v, float) and v != v:
        return "undefined"  # NaN: a measure with nothing to measure (an empty class), not a number
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
