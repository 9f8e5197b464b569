"""Atomic file writes: every output stitchkit writes (SAEs, stores, checkpoints, reports) goes to a
temporary sibling first and is renamed over its target, so an interrupted write loses nothing.

Across ranks (stitchkit.dist) only the writer writes: rank 0, or a rank inside dist.alone() (work
that is its own, such as its shards of a store). On the other ranks these functions return the
target path without touching the disk, once the writer has written it (a barrier): every rank
calls them at the same point, and may read the file right after."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


def writes() -> bool:
    """Whether this process writes outputs (see the module doc)."""
    from . import dist

    return dist.is_main()


def atomic_write(path: Path, write) -> Path:
    """Call write(binary file handle) on a temporary sibling of `path`, then rename it over `path`."""
    path = Path(path)
    try:
        if writes():
            _write(path, write)
    finally:
        _synced()
    return path


def _synced() -> None:
    from . import dist

    dist.barrier()


def _write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report or checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` through a temporary file and a rename."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_json(obj: Any, path: Path) -> Path:
    """Write `obj` as indented JSON to `path` through a temporary file and a rename."""
    return atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, keeping the old one until the swap is done."""
    if not writes():
        shutil.rmtree(new, ignore_errors=True)
        return
    for f in new.iterdir():  # contents on disk before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
