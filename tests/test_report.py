"""report.md's plots and tables say what is undefined instead of drawing or printing NaN."""

import matplotlib

matplotlib.use("Agg")

from stitchkit.report import _calibration_plots, undefined_auroc  # noqa: E402
from stitchkit.tables import cell  # noqa: E402


def calibration(auroc, helps, hurts):
    return dict(measure="decoder", auroc=auroc, best_threshold=0.5, n_helps=helps, n_hurts=hurts,
                roc=dict(fpr=[0.0, 1.0], tpr=[0.0, 1.0]))  # fmt: skip


def test_an_undefined_auroc_is_named_and_not_drawn(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    res = {"calibration": {"b vs a": {"decoder": calibration(0.8, 5, 5)},
                           "seed": {"decoder": calibration(float("nan"), 7, 0)}}}  # fmt: skip
    figs, real = [], plt.subplots

    def recording(*args, **kwargs):
        fig, ax = real(*args, **kwargs)
        figs.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", recording)
    made = _calibration_plots(res, tmp_path, plt)
    assert made and (tmp_path / "calibration_decoder.png").exists()
    lines = {ln.get_label(): ln for ln in figs[0].get_lines()}
    seed = lines["seed: AUROC undefined (all 7 inserted features help: no other class to rank against)"]
    assert len(seed.get_xdata()) == 0  # nothing drawn for it
    assert len(lines["b vs a: AUROC 0.800, best t 0.50"].get_xdata()) == 2


def test_undefined_reasons_and_cells():
    assert "all 3 inserted features hurt" in undefined_auroc(calibration(float("nan"), 0, 3))
    assert "no feature measured" in undefined_auroc(calibration(float("nan"), 0, 0))
    assert cell(float("nan")) == "undefined" and cell(0.25) == "0.25"
