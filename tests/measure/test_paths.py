"""Path metrics (stitchkit.measure.paths) against the SAE built at every step."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    evaluate,
    path_metrics,
)
from tests.helpers import pair


def test_path_metrics_equals_explicit_saes_at_every_step():
    base, donor, x = pair()
    steps = [([1, 2, 3], []), ([], [0, 5]), ([4], [6, 7]), ([], []), (torch.tensor([20, 28]), [12])]
    pm = path_metrics(base, donor, steps, [x[:333], x[333:]])
    assert len(pm.mse) == len(steps) + 1
    added, removed = [], []
    for s in range(len(steps) + 1):
        if s:
            added += list(torch.as_tensor(steps[s - 1][0]).tolist())
            removed += list(torch.as_tensor(steps[s - 1][1]).tolist())
        kept = [i for i in range(base.d_sae) if i not in removed]
        parts = [(base, kept)] + ([(donor, added)] if added else [])
        sae = type(base).from_features(parts, base=base)
        m = evaluate(sae, x)
        assert pm.n_features[s] == sae.d_sae
        assert pm.mse[s].item() == pytest.approx(m.mse, rel=1e-10)
        assert pm.normalized_mse[s].item() == pytest.approx(m.normalized_mse, rel=1e-10)
        assert pm.l0[s].item() == pytest.approx(m.l0, rel=1e-12)
    with pytest.raises(InvalidArgumentError, match="added twice"):
        path_metrics(base, donor, [([1], []), ([1], [])], x)
    with pytest.raises(InvalidArgumentError, match=r"steps\[0\] removed.*\[0, 13\)"):
        path_metrics(base, donor, [([1], [13])], x)


def test_a_long_path_of_single_features_equals_the_explicit_saes():
    """Every donor feature added alone, then every base feature but one removed alone: the
    nonzeros applied in rank rounds give the SAE built after each step."""
    base, donor, x = pair()
    g = torch.Generator().manual_seed(3)
    steps = [([int(i)], []) for i in torch.randperm(donor.d_sae, generator=g)]
    steps += [([], [int(i)]) for i in torch.randperm(base.d_sae, generator=g)[: base.d_sae - 1]]
    pm = path_metrics(base, donor, steps, [x[:100], x[100:]])
    for s in (0, 1, 7, donor.d_sae, len(steps) - 3, len(steps)):
        added = [a for st in steps[:s] for a in st[0]]
        removed = [r for st in steps[:s] for r in st[1]]
        kept = [i for i in range(base.d_sae) if i not in removed]
        parts = [(base, kept)] + ([(donor, added)] if added else [])
        m = evaluate(type(base).from_features(parts, base=base), x)
        assert pm.mse[s].item() == pytest.approx(m.mse, rel=1e-10)
        assert pm.l0[s].item() == pytest.approx(m.l0, rel=1e-12)
