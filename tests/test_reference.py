"""The reference work's findings beside a study's own (stitchkit.reference): each verdict follows
from the numbers, and a class with no members gets no share and no verdict."""

from stitchkit.reference import reference_rows


def head(**changes):
    h = dict(pair="b vs a", n_large=100, novel=40, novel_helps=30, novel_hurts=10, recon_helps=20,
             recon_hurts=40, plus_novel_change=-0.05, mse_small=1.0, mse_plus_novel=0.95, n_groups=0,
             path_start=1.0, path_after_novel=0.95, path_end=0.9, mse_large=0.8)  # fmt: skip
    h.update(changes)
    return {"headline": "b vs a", "pairs": [h]}


def two_by_two(res):
    return next(r for r in reference_rows(res) if r["finding"].startswith("2x2"))


def test_the_pattern_and_its_differences():
    assert two_by_two(head())["verdict"] == "same pattern"
    assert two_by_two(head(novel_helps=5))["verdict"] == "differs: novel features mostly hurt"
    assert two_by_two(head(recon_hurts=5))["verdict"] == "differs: reconstruction features mostly help"


def test_an_empty_class_has_no_share_and_no_verdict():
    row = two_by_two(head(novel=100, recon_helps=0, recon_hurts=0))
    assert row["verdict"] == "no verdict: the reconstruction class is empty at this threshold"
    assert "no reconstruction features" in row["this_run"] and "nan" not in row["this_run"]
    row = two_by_two(head(novel=0, novel_helps=0, novel_hurts=0))
    assert row["verdict"] == "no verdict: the novel class is empty at this threshold"
    assert "75% of novel help" not in row["this_run"] and "no novel features" in row["this_run"]
