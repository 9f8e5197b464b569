"""The stitching rules (stitchkit.stitch.rules): the threshold check and the one novelty rule."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    classify,
    frankenstein,
    interpolate,
    max_cosine,
    novel_fraction_sweep,
    swap_groups,
)
from stitchkit.stitch.rules import check_threshold, is_novel
from tests.helpers import built_pair


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, True, "0.7", float("nan")])
def test_thresholds_outside_unit_interval_are_refused(bad):
    small, large = built_pair()
    for fn in (classify, swap_groups):
        with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
            fn(small, large, bad)
    with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
        interpolate(small, large, torch.zeros(3, 6, dtype=torch.float64), bad)


def test_a_feature_exactly_at_the_threshold_is_novel_everywhere():
    """The one novelty rule: classify, the sweep, the interpolation and Frankenstein agree on a
    feature whose max cosine equals the threshold (the reference's Frankenstein would skip it)."""
    small, large = built_pair()
    mc = max_cosine(large, small).values
    j = 5  # a child of small feature 3 at cos ~0.72
    t = float(mc[j])
    below = float(torch.nextafter(mc[j], torch.tensor(0.0)))  # the next float32 under t
    assert is_novel(mc, t)[j] and not is_novel(mc, below)[j]
    c = classify(small, large, t)
    assert bool(c.novel[j]) and int(c.novel.sum()) == int((mc <= t).sum())
    ts, counts = novel_fraction_sweep(mc, [t])
    assert int(counts[0]) == int(c.novel.sum())
    path = interpolate(small, large, torch.randn(50, 6, dtype=torch.float64), t)
    assert j in path.steps[0][0].tolist()
    fr = frankenstein([small, large], torch.randn(200, 6, dtype=torch.float64), t, retrain=None)
    added = [i for s, i in fr.sae.provenance.entries() if s == large.name]
    assert j in added and len(added) == int(c.novel.sum())


def test_check_threshold_bounds():
    assert check_threshold(0.5, "f") == 0.5
    assert check_threshold(-0.5, "f", low=-1.0) == -0.5
    with pytest.raises(InvalidArgumentError, match=r"f: threshold must lie in \(-1, 1\)"):
        check_threshold(-1.0, "f", low=-1.0)
