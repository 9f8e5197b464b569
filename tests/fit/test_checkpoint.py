"""The one checkpoint scheme (stitchkit.fit.checkpoint): state files and stage directories belong to
one run, are written atomically, and refuse another run's signature."""

import pytest
import torch

from stitchkit import InvalidArgumentError, load_sae
from stitchkit.fit.checkpoint import RunDir, StateFile
from tests.helpers import random_sae


def test_state_file_round_trip_and_refuses_another_run(tmp_path):
    path = tmp_path / "ck.pt"
    sig = dict(name="a", width=8)
    f = StateFile(path, sig, "train_sae")
    assert f.load() is None
    f.save(dict(step=3, w=torch.arange(4.0)))
    got = StateFile(path, sig, "train_sae").load()
    assert got["step"] == 3 and torch.equal(got["w"], torch.arange(4.0))
    with pytest.raises(InvalidArgumentError, match="train_sae: checkpoint .* belongs to another run"):
        StateFile(path, dict(name="a", width=16), "train_sae").load()
    f.remove()
    assert not path.exists()
    StateFile(None, sig, "x").save(dict(step=1))  # no path: nothing written, nothing raised
    assert StateFile(None, sig, "x").load() is None


def test_run_dir_stages(tmp_path):
    sig = dict(family=["a", "b"], threshold=0.7)
    run = RunDir(tmp_path / "run", sig, "frankenstein")
    assert run.finished(1) is None
    sae = random_sae(seed=3, d_in=5, d_sae=6)
    run.work_file(1).write_bytes(b"optimiser state")
    run.finish(1, sae, dict(added=[1, 2], retrain_seconds=0.5))
    assert run.finished(1) == dict(added=[1, 2], retrain_seconds=0.5)
    assert not run.work_file(1).exists()  # the unfinished work is gone once the stage is
    assert torch.equal(load_sae(run.stage(1)[0]).W_dec, sae.W_dec)
    assert RunDir(tmp_path / "run", sig, "frankenstein").finished(1) is not None
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        RunDir(tmp_path / "run", dict(sig, threshold=0.6), "frankenstein")
