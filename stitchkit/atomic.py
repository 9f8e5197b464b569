"""Atomic file writes and the one rule for outputs.

Every output stitchkit writes (SAEs, stores, checkpoints, reports) goes to a temporary sibling
first and is renamed over its target, so an interrupted write loses nothing.

Ownership: stitchkit writes into a directory only when it is new (or empty), or when it holds
stitchkit's own output, recognised by a marker stitchkit wrote (MARKER in a run directory,
SAE_MARKER in an SAE directory). A single output file is replaced only when its content says
stitchkit wrote it. Nothing here removes a file stitchkit did not write: replacing an SAE
directory refuses one that holds other files, and a replaced output is moved aside and removed
only once the new one is complete (`claim_dir`, `check_sae_dir`, `check_file`).

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

from .errors import CorruptFileError, OutputError

MARKER = ".stitchkit"  # a run directory stitchkit made: {"written_by": "stitchkit", "kind": ...}
SAE_MARKER = "stitchkit.json"  # beside an SAE stitchkit saved (sae.io)
WRITTEN_BY = "stitchkit"  # the "written_by" value of stitchkit's JSON records and .pt outputs


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


def decided(check):
    """check() run by the writer, its answer (or its StitchkitError) shared with every rank, so
    a refusal stops all ranks at the same point instead of leaving them at a barrier."""
    from . import dist
    from .errors import StitchkitError

    out = err = None
    if writes():
        try:
            out = check()
        except StitchkitError as e:
            err = e
    out, err = dist.broadcast((out, err))
    if err is not None:
        raise err
    return out


def _synced() -> None:
    from . import dist

    dist.barrier()


def _write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        shared_mode(tmp)  # mkstemp makes 0600; a report or checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # say which output could not be written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def shared_mode(path, directory: bool = False) -> None:
    """Give a file (0666) or directory (0777) the user's umask: temporary-file helpers and
    safetensors make them 0600/0700, but an output is shared like any file the user makes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` through a temporary file and a rename."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_json(obj: Any, path: Path) -> Path:
    """Write `obj` as indented JSON to `path` through a temporary file and a rename."""
    return atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))


def check_sae_dir(path, *, fn: str, overwrite: bool, own: tuple[str, ...]) -> Path:
    """An SAE directory may be written at `path`: it is new or empty, or it is an SAE stitchkit
    saved (SAE_MARKER) holding only the files `own` names and `overwrite` is set."""
    path = Path(path)
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputError(f"{fn}: {path} exists and is not a directory")
    entries = [e.name for e in path.iterdir()]
    if not entries:
        return path
    if dir_kind(path) != "sae":
        raise OutputError(
            f"{fn}: {path} holds files stitchkit did not write ({_listing(path, entries)}); "
            "stitchkit writes an SAE only into a new directory or one it saved: choose another"
        )
    foreign = [n for n in entries if n not in own]
    if foreign:
        raise OutputError(
            f"{fn}: {path} is an SAE stitchkit saved, but it also holds {_listing(path, foreign)}, "
            "which stitchkit did not write and will not remove: move them out or choose another"
        )
    if not overwrite:
        raise OutputError(f"{fn}: {path} already holds an SAE; pass --overwrite to replace it")
    return path


def replace_dir(new: Path, target: Path, own: tuple[str, ...]) -> None:
    """Move the finished directory `new` to `target`. An old `target` (checked by check_sae_dir)
    is moved aside first and emptied of the files `own` names only once the new one is in place;
    anything else found in it then stays where it was moved, never removed."""
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
    for name in own:
        (old / name).unlink(missing_ok=True)
    try:
        os.rmdir(old)
    except OSError:
        pass  # it held something stitchkit did not write: left aside, not removed


def read_json(path: Path, what: str) -> Any:
    """The JSON in `path`, or one CorruptFileError naming the file and what it should hold."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise CorruptFileError(f"{path}: cannot read {what} ({e.strerror})") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path}: {what} is not valid JSON ({e}); it is damaged") from e


RESTART_HINT = "re-run with --restart (restart=True) to discard it, or use another output path"


def differences(found: Any, expected: dict) -> str:
    """'field saved (this run: value), ...' for the fields where saved state's identity (a
    checkpoint's signature, a record, a manifest) differs from this run's."""
    if not isinstance(found, dict):
        return f"it records no run signature ({type(found).__name__})"
    keys = [k for k in dict.fromkeys([*expected, *found]) if found.get(k) != expected.get(k)]
    return ", ".join(f"{k} {found.get(k)!r} (this run: {expected.get(k)!r})" for k in keys)


def dir_kind(path: Path) -> str | None:
    """The kind of stitchkit output `path` holds ("sae", "store", "family", ...), or None."""
    path = Path(path)
    if (path / MARKER).is_file():
        try:
            mark = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        if isinstance(mark, dict) and mark.get("written_by") == WRITTEN_BY:
            return str(mark.get("kind"))
        return None
    if (path / SAE_MARKER).is_file():
        return "sae"
    try:  # a store collected before stores were marked
        if "shards" in json.loads((path / "manifest.json").read_text()):
            return "store"
    except (OSError, ValueError, TypeError):
        pass
    return None


def _listing(path: Path, names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def claim_dir(path, kind: str, *, fn: str, resume: bool = False, overwrite: bool = False) -> bool:
    """Make `path` stitchkit's `kind` output directory, or refuse it (OutputError).

    A missing or empty directory is made and marked. One that holds stitchkit's output of the
    same kind is taken when `resume` (a resumable job continues there) or `overwrite`; any other
    non-empty directory is refused, so a mistyped path never touches a user's files. Returns
    True when the directory was new (or empty), False when stitchkit's output was there."""
    fresh = decided(lambda: _claim(Path(path), kind, fn, resume, overwrite))
    if fresh:
        atomic_write_json(dict(written_by=WRITTEN_BY, kind=kind, version=_version()), Path(path) / MARKER)
    return fresh


def _claim(path: Path, kind: str, fn: str, resume: bool, overwrite: bool) -> bool:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{fn}: {path} exists and is not a directory")
    found = dir_kind(path) if path.is_dir() else None
    if found is None:
        others = [e.name for e in path.iterdir()] if path.is_dir() else []
        if others:
            raise OutputError(
                f"{fn}: {path} holds files stitchkit did not write ({_listing(path, others)}); "
                "stitchkit writes only into a new directory or its own output: choose another"
            )
        path.mkdir(parents=True, exist_ok=True)
        return True
    if found != kind:
        raise OutputError(f"{fn}: {path} holds stitchkit's {found} output, not a {kind}; choose another")
    if not (resume or overwrite):
        raise OutputError(
            f"{fn}: {path} already holds stitchkit's {kind} output; pass --overwrite to replace it "
            "(only stitchkit's own files are replaced)"
        )
    return False


def check_file(path, *, fn: str, overwrite: bool) -> Path:
    """An output file may be written: it is new, or stitchkit wrote it and `overwrite` is set."""
    path = Path(path)
    if not path.exists():
        return path
    if path.is_dir():
        raise OutputError(f"{fn}: {path} is a directory, expected a file path")
    if not is_ours(path):
        raise OutputError(
            f"{fn}: {path} exists and was not written by stitchkit; stitchkit never replaces "
            "another program's file: choose another path"
        )
    if not overwrite:
        raise OutputError(f"{fn}: {path} exists (stitchkit's output); pass --overwrite to replace it")
    return path


def is_ours(path: Path) -> bool:
    """Whether the file's content says stitchkit wrote it (a JSON record's or a .pt dict's
    "written_by", report.md's and report.html's first line, a plot's PNG metadata)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
        elif path.suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix in (".md", ".html", ".png"):
            head = path.open("rb").read(4096)
            if path.suffix in (".md", ".html"):
                return head.startswith(REPORT_MARK.encode())
            return b"Software\x00" + WRITTEN_BY.encode() in head
        else:
            return False
    except Exception:  # unreadable, not JSON, or a pickle weights_only refuses: not ours
        return False
    return isinstance(obj, dict) and obj.get("written_by") == WRITTEN_BY


REPORT_MARK = "<!-- written by stitchkit -->"  # report.md's and report.html's first line


def _version() -> str:
    from . import __version__

    return __version__
