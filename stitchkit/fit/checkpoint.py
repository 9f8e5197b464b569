"""One checkpoint scheme for every long job (train_sae, retrain_decoder, frankenstein).

A checkpoint belongs to one run, named by its `signature` (a JSON-able dict of what defines the
run: names, sizes, hyper-parameters, weight fingerprints). Everything is written atomically, and a
checkpoint whose signature differs from the run's raises instead of being mixed into it.

    StateFile(path, signature, fn)   one torch state dict (weights_only load): .load() / .save(state)
                                     / .remove(); train_sae and retrain_decoder resume from it
    RunDir(path, signature, fn)      a directory of finished stages: run.json holds the signature,
                                     stage_NN/ an SAE directory and stage_NN.json its row; frankenstein
                                     skips finished stages and resumes the unfinished one (whose
                                     optimiser state is a StateFile at work_file(i))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .. import dist
from ..atomic import atomic_torch_save, atomic_write_json, writes
from ..errors import InvalidArgumentError
from ..sae.io import save_sae


def _mismatch(fn: str, where: Path, found: Any, expected: dict) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{fn}: checkpoint {where} belongs to another run ({found}), expected {expected}; "
        "delete it or pass another path"
    )


class StateFile:
    """A torch state file for one run; a missing path (None) makes load() None and save() a no-op."""

    def __init__(self, path: str | os.PathLike | None, signature: dict, fn: str):
        self.path = Path(path) if path is not None else None
        self.signature, self.fn = signature, fn

    def load(self, map_location="cpu") -> dict | None:
        """The saved state (None when there is none); raises if it belongs to another run."""
        if self.path is None or not dist.broadcast(self.path.exists()):  # rank 0's view, on every rank
            return None
        state = torch.load(self.path, map_location=map_location, weights_only=True)
        if state.get("signature") != self.signature:
            raise _mismatch(self.fn, self.path, state.get("signature"), self.signature)
        return state

    def save(self, state: dict) -> None:
        if self.path is not None:
            atomic_torch_save(dict(state, signature=self.signature), self.path)

    def remove(self) -> None:
        if self.path is not None and writes():
            self.path.unlink(missing_ok=True)


class RunDir:
    """A directory of numbered finished stages of one run (see the module doc)."""

    def __init__(self, path: str | os.PathLike, signature: dict, fn: str):
        self.path, self.signature, self.fn = Path(path), signature, fn
        run = self.path / "run.json"
        if dist.broadcast(run.exists()):
            found = json.loads(run.read_text())
            if found != signature:
                raise _mismatch(fn, self.path, found, signature)
        else:
            atomic_write_json(signature, run)

    def stage(self, i: int) -> tuple[Path, Path]:
        """(SAE directory, row JSON) of stage i."""
        return self.path / f"stage_{i:02d}", self.path / f"stage_{i:02d}.json"

    def work_file(self, i: int) -> Path:
        """Where stage i's unfinished work keeps its StateFile."""
        return self.path / f"stage_{i:02d}.retrain.pt"

    def finished(self, i: int) -> dict | None:
        """Stage i's row, or None while it is not finished."""
        sae_dir, row = self.stage(i)
        return json.loads(row.read_text()) if dist.broadcast(sae_dir.exists() and row.exists()) else None

    def finish(self, i: int, sae, row: dict) -> None:
        """Save stage i (its SAE, then its row: a stage counts as finished once its row exists)."""
        sae_dir, row_path = self.stage(i)
        save_sae(sae, sae_dir)
        atomic_write_json(row, row_path)
        self.work_file(i).unlink(missing_ok=True)
