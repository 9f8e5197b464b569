"""One checkpoint scheme for every long job (train_sae, retrain_decoder, frankenstein).

A checkpoint belongs to one run, named by its `signature` (a JSON-able dict of everything that
changes the result: names, sizes, hyper-parameters, weight fingerprints, the data's identity, see
`batch_digest`). Everything is written atomically, and a checkpoint whose signature differs from
the run's raises RunMismatchError naming the fields that differ, instead of being mixed into it.
A checkpoint that cannot be read (truncated, garbage, or a pickle that would run code: loads are
weights_only) raises CorruptFileError naming the file.

    StateFile(path, signature, fn)   one torch state dict (weights_only load): .load() / .save(state)
                                     / .remove(); train_sae and retrain_decoder resume from it
    RunDir(path, signature, fn)      a directory of finished stages: run.json holds the signature,
                                     stage_NN/ an SAE directory and stage_NN.json its row; frankenstein
                                     skips finished stages and resumes the unfinished one (whose
                                     optimiser state is a StateFile at work_file(i))
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .. import dist
from ..atomic import RESTART_HINT, atomic_torch_save, atomic_write_json, differences, read_json, writes
from ..errors import CorruptFileError, RunMismatchError
from ..sae.io import remove_sae_dir, save_sae


def _mismatch(fn: str, where: Path, found: Any, expected: dict) -> RunMismatchError:
    return RunMismatchError(
        f"{fn}: checkpoint {where} belongs to another run: {differences(found, expected)}; {RESTART_HINT}"
    )


def batch_digest(x: torch.Tensor) -> str:
    """A short digest of one batch's values and shape: with a run's first batch in its signature,
    a resume on other data (another store, batch size, seed or token budget) is refused."""
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(sae) -> str:
    """A digest of an SAE's weights, so saved state is never reused for other weights."""
    h = hashlib.sha256()
    for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_state(path: Path, map_location="cpu", what: str = "checkpoint") -> Any:
    """torch.load(weights_only=True) with one CorruptFileError for any file it cannot read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(
            f"{path}: cannot read this {what} ({first[:160]}); it is damaged or not stitchkit's "
            "(pickled code is never run); delete it or re-run with --restart"
        ) from e


class StateFile:
    """A torch state file for one run; a missing path (None) makes load() None and save() a no-op."""

    def __init__(self, path: str | os.PathLike | None, signature: dict, fn: str):
        self.path = Path(path) if path is not None else None
        self.signature, self.fn = signature, fn

    def load(self, map_location="cpu") -> dict | None:
        """The saved state (None when there is none); raises if it belongs to another run."""
        if self.path is None or not dist.broadcast(self.path.exists()):  # rank 0's view, on every rank
            return None
        state = load_state(self.path, map_location)
        if not isinstance(state, dict):
            raise CorruptFileError(f"{self.path}: expected a checkpoint dict, found {type(state).__name__}")
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
            found = read_json(run, "a checkpoint's run signature")
            if found != signature:
                raise _mismatch(fn, self.path, found, signature)
        else:
            atomic_write_json(signature, run)

    @staticmethod
    def discard(path: str | os.PathLike) -> None:
        """Remove a run directory's own files (run.json, stage_NN/ and their rows, work files)."""
        path = Path(path)
        if not writes() or not path.is_dir():
            return
        (path / "run.json").unlink(missing_ok=True)
        for f in path.glob("stage_[0-9][0-9]*"):
            if f.is_dir():
                remove_sae_dir(f)
            else:
                f.unlink()

    def stage(self, i: int) -> tuple[Path, Path]:
        """(SAE directory, row JSON) of stage i."""
        return self.path / f"stage_{i:02d}", self.path / f"stage_{i:02d}.json"

    def work_file(self, i: int) -> Path:
        """Where stage i's unfinished work keeps its StateFile."""
        return self.path / f"stage_{i:02d}.retrain.pt"

    def finished(self, i: int) -> dict | None:
        """Stage i's row, or None while it is not finished."""
        sae_dir, row = self.stage(i)
        return (
            read_json(row, "a finished stage's row")
            if dist.broadcast(sae_dir.exists() and row.exists())
            else None
        )

    def finish(self, i: int, sae, row: dict) -> None:
        """Save stage i (its SAE, then its row: a stage counts as finished once its row exists)."""
        sae_dir, row_path = self.stage(i)
        save_sae(sae, sae_dir)
        atomic_write_json(row, row_path)
        self.work_file(i).unlink(missing_ok=True)
