"""The Frankenstein assembly (stitchkit.stitch.frankenstein): stages, provenance, checkpoint/resume."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    evaluate,
    frankenstein,
    load_sae,
    make_toy,
    train_sae,
)
from tests.helpers import Interrupt, random_sae


@pytest.fixture(scope="module")
def family():
    toy = make_toy(d_in=16, n_parents=8, children_per_parent=2, n_rare=8, child_cosine=0.6, seed=1)
    saes = []
    for width in (8, 16, 32):
        saes.append(
            train_sae(
                toy.batches(60_000, 500, seed=1),
                16,
                width,
                l1_coefficient=0.1,
                lr=1e-2,
                seed=width,
                name=f"toy-{width}",
                n_steps=120,
            )
        )
    return toy, saes


def test_frankenstein_stages_provenance_and_resume(family, tmp_path):
    toy, saes = family
    train = toy.sample(4000, seed=3)
    held = toy.sample(2000, seed=4)
    res = frankenstein(saes[::-1], train, 0.7, retrain="lstsq", eval_acts=held)
    assert [s.source for s in res.stages] == ["toy-8", "toy-16", "toy-32"]
    st = res.stages
    assert st[0].n_features == 8 and st[0].mse == pytest.approx(evaluate(saes[0], held).mse)
    for a, b in zip(st, st[1:]):
        assert b.n_features == a.n_features + b.n_added
        assert b.mse <= b.mse_before + 1e-9  # least squares never raises the training-set fit much
    assert res.sae.d_sae == st[-1].n_features
    assert set(res.sae.provenance.sources) <= {"toy-8", "toy-16", "toy-32"}
    assert st[-1].mse == pytest.approx(evaluate(res.sae, held).mse)
    assert st[-1].reference in {"toy-16", "toy-32"}

    ck = tmp_path / "run"
    messages = []

    def stop_in_stage_2(msg):
        messages.append(msg)
        if msg.startswith("stage 2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        frankenstein(
            saes, train, retrain="lstsq", eval_acts=held, checkpoint_dir=ck, progress=stop_in_stage_2
        )
    assert (ck / "stage_01.json").exists() and not (ck / "stage_02.json").exists()
    assert load_sae(ck / "stage_01").d_sae == st[1].n_features
    messages.clear()
    again = frankenstein(
        saes, train, retrain="lstsq", eval_acts=held, checkpoint_dir=ck, progress=messages.append
    )
    assert messages[0] == f"stage 1: loaded from {ck}"  # stage 0 is the smallest SAE: never saved
    assert not any(m.startswith("stage 1: retraining") for m in messages)
    assert [s.mse for s in again.stages] == pytest.approx([s.mse for s in st], rel=1e-6)
    assert again.sae.provenance.entries() == res.sae.provenance.entries()
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        frankenstein(saes, train, 0.6, retrain="lstsq", checkpoint_dir=ck)
    retrained = [saes[0], saes[1].select(torch.arange(16), name="toy-16"), saes[2]]
    with torch.no_grad():
        retrained[1].W_dec[0] += 0.01  # same names and widths, other weights
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        frankenstein(retrained, train, retrain="lstsq", checkpoint_dir=ck)


def test_frankenstein_refuses_bad_input(family):
    toy, saes = family
    x = toy.sample(100)
    with pytest.raises(InvalidArgumentError, match="at least one SAE"):
        frankenstein([], x)
    with pytest.raises(InvalidArgumentError, match="retrain must be one of"):
        frankenstein(saes, x, retrain="sgd")
    with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
        frankenstein(saes, x, 1.2)
    with pytest.raises(InvalidArgumentError, match="several passes"):
        frankenstein(saes, iter([x]))
    other = random_sae(d_in=5, d_sae=4, name="other")
    with pytest.raises(Exception, match="d_in"):
        frankenstein(saes + [other], x)
