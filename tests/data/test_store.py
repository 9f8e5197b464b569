"""The on-disk activation store (stitchkit.data.store): collect, resume, stream."""

import json

import pytest
import torch

from stitchkit import InvalidArgumentError
from stitchkit.data import ActivationStore
from tests.helpers import TEXTS, Interrupt

pytest.importorskip("transformer_lens")


def test_activation_store_collects_resumes_and_streams(tiny, tmp_path):
    full = ActivationStore.collect(tiny, TEXTS, tmp_path / "full", max_tokens=150, shard_tokens=40)
    assert full.n_tokens == 150 and len(full.manifest["shards"]) >= 3
    seen = []

    def stop_after_two_shards(n):
        seen.append(n)
        if n >= 80:
            raise Interrupt

    with pytest.raises(Interrupt):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "part", max_tokens=150, shard_tokens=40,
                                progress=stop_after_two_shards)  # fmt: skip
    partial = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert not partial["complete"] and partial["shards"]
    resumed = ActivationStore.collect(tiny, TEXTS, tmp_path / "part", max_tokens=150, shard_tokens=40)
    a = torch.cat(list(full.batches(64, shuffle=False)))
    b = torch.cat(list(resumed.batches(64, shuffle=False)))
    assert torch.equal(a, b)
    shuffled = torch.cat(list(full.batches(32, seed=3, window=2)))
    assert not torch.equal(shuffled, a)
    assert torch.equal(torch.sort(shuffled.sum(1)).values, torch.sort(a.sum(1)).values)  # each row once
    assert [len(x) for x in full.stream(32, 7, seed=1)] == [32] * 7  # loops over epochs
    with pytest.raises(InvalidArgumentError, match="holds another collection"):
        ActivationStore.collect(tiny, TEXTS, tmp_path / "full", max_tokens=151, shard_tokens=40)
    with pytest.raises(InvalidArgumentError, match="no manifest.json"):
        ActivationStore(tmp_path / "nothing")


def test_store_files_follow_the_umask(tmp_path):
    """Shards and manifests take the user's umask (safetensors alone writes 0600)."""
    import os
    import stat

    from stitchkit.data.store import ActivationStore

    old = os.umask(0o022)
    try:
        store = ActivationStore.from_tensor(torch.randn(30, 4), tmp_path / "s", model="m", hook_name="h",
                                            shard_tokens=10)  # fmt: skip
    finally:
        os.umask(old)
    for f in store.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
