"""The registry of SAE file formats: one module per library's layout, each with
    NAME        its name (`load_sae(..., format=NAME)` forces it)
    DESCRIBES   one line: what it reads (README's table of sources)
    detect(p)   whether the path p (a directory or a file) is in this layout
    read(p, **options) -> SAEFile   the SAE in stitchkit's form (formats._common)
    ORACLE      the code its reading is checked against: the writer, or the writer's own loader
    NOT_READ    config fields the writer saves that do not change the features (training only),
                which the reader leaves unread; the load report names any other unread field
Detection tries the formats in `FORMATS` order; the first that claims the path reads it.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SAEFormatError
from . import (
    batchtopk_family,
    dictionary_learning,
    gemma_scope,
    llama_scope,
    llamascopium,
    openai,
    saelens,
    sparsify,
)
from ._common import INPUT_NORMS, LoadReport, SAEFile, recording

FORMATS = (
    saelens,
    sparsify,
    batchtopk_family,
    dictionary_learning,
    gemma_scope,
    llama_scope,
    llamascopium,
    openai,
)
BY_NAME = {f.NAME: f for f in FORMATS}

# The file names each layout may need (what a hub download fetches for a folder).
HUB_FILES = tuple(dict.fromkeys(n for f in FORMATS for n in getattr(f, "FILES", ())))


def detect(path: Path):
    """The format module for `path`, or a SAEFormatError listing what the path holds (or, for a
    directory two layouts claim, naming both and how to pick one)."""
    claims = [fmt for fmt in FORMATS if fmt.detect(path)]
    if len(claims) > 1:
        held = lambda f: ", ".join(n for n in getattr(f, "FILES", ()) if (path / n).exists())  # noqa: E731
        names = " and ".join(f"{f.NAME} ({held(f)})" for f in claims)
        by_file = [f for f in claims if f.NAME in ("dictionary_learning", "gemma-scope")]  # a file path reads
        pick = f"pass {path / by_file[0].WEIGHTS} for {by_file[0].NAME}, " if by_file else ""
        raise SAEFormatError(
            f"{path}: holds more than one SAE layout: {names}; name one: {pick}"
            f"move the other's files out, or from Python load_sae(path, format={claims[0].NAME!r})"
        )
    if claims:
        return claims[0]
    if path.is_dir():
        subs = sparsify.hookpoints(path)
        if subs:
            raise SAEFormatError(
                f"{path}: a sparsify checkpoint with one SAE per hookpoint {subs}; name one "
                f"(load_sae(path, hookpoint=...) or {path / subs[0]})"
            )
        held = sorted(p.name for p in path.iterdir())
        raise SAEFormatError(
            f"{path}: no SAE layout recognised (expected one of: "
            + "; ".join(f.DESCRIBES for f in FORMATS)
            + f"); directory holds {held}"
        )
    raise SAEFormatError(
        f"{path}: no SAE layout reads this file (expected params.npz, ae.pt or an OpenAI .pt)"
    )


def read(path: Path, format: str | None = None, **options) -> SAEFile:
    if format is not None:
        if format not in BY_NAME:
            raise SAEFormatError(f"format {format!r} is unknown, expected one of {sorted(BY_NAME)}")
        fmt = BY_NAME[format]
    else:
        fmt = detect(path)
    with recording() as seen:
        f = fmt.read(path, **options)
    f.report = LoadReport.of(fmt, f, seen)
    return f


__all__ = ["BY_NAME", "FORMATS", "HUB_FILES", "INPUT_NORMS", "LoadReport", "SAEFile", "detect", "read"]
