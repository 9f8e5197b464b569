"""SAE files in and out: `load_sae` is the front door for every source (sae.sources: a path,
hf://, saelens:) in every layout (sae.formats: SAELens, sparsify, dictionary_learning, Gemma Scope,
Llama Scope, OpenAI, the BatchTopK family); `save_sae` writes the SAELens 6 layout.

Every reader returns an SAEFile; `build` checks it (shapes, floating point, finite values) and
makes the SAE, with the tensors read becoming its parameters (no second copy). Pickled files are
read with torch.load(weights_only=True) only: a weights file never runs code. Saving is atomic:
files go to a temporary sibling directory that replaces the target by rename.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..atomic import replace_dir, shared_mode
from ..errors import NonFiniteError, OutputError, SAEFormatError, ShapeError
from . import formats
from .formats import saelens
from .formats._common import SAEFile, read_json, read_safetensors
from .model import SAE
from .provenance import Provenance
from .sources import resolve

FORMAT_VERSION = 1
STITCHKIT_META = saelens.STITCHKIT_META
PROVENANCE_FILE = saelens.PROVENANCE_FILE


def _checked(f: SAEFile, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = f.tensors[key]
    if tuple(t.shape) != shape:
        hint = ""
        if key in ("W_enc", "W_dec", "b_dec") and t.dim() >= 1:
            hint = "; do the config's d_in/d_sae match the weights?"
        raise ShapeError(f"{f.where}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}{hint}")
    if not t.is_floating_point():
        raise SAEFormatError(f"{f.where}: tensor {key!r} has dtype {t.dtype}, expected floating point")
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteError(f"{f.where}: tensor {key!r} holds {bad} NaN/Inf values, expected finite")
    return t


def build(
    f: SAEFile, *, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> SAE:
    """The SAE an SAEFile describes, checked, on `device` in `dtype` (default: the file's)."""
    d_in, d_sae = f.d_in, f.d_sae
    if f.k is not None and not 0 < f.k <= d_sae:
        raise SAEFormatError(f"{f.where}: k={f.k} must lie in 1..d_sae={d_sae} (a {f.activation} SAE)")
    W_enc = _checked(f, "W_enc", (d_in, d_sae))
    W_dec = _checked(f, "W_dec", (d_sae, d_in))
    b_dec = _checked(f, "b_dec", (d_in,))
    b_enc = _checked(f, "b_enc", (d_sae,))
    dtype = dtype or f.dtype or W_dec.dtype
    threshold = None
    if f.activation == "jumprelu":
        threshold = _checked(f, "threshold", (d_sae,))
    elif f.activation == "batchtopk" and "threshold" in f.tensors:
        t = f.tensors["threshold"].reshape(-1)
        if not torch.isfinite(t).all() or len(t) not in (1, d_sae) or not torch.all(t == t[0]):
            raise SAEFormatError(
                f"{f.where}: the batchtopk threshold must be one finite value (or {d_sae} equal "
                f"ones), found shape {tuple(f.tensors['threshold'].shape)}"
            )
        threshold = t[0]
    sae = SAE(
        d_in,
        d_sae,
        f.activation,
        k=f.k,
        l1_coefficient=f.l1_coefficient,
        hook_name=f.hook_name,
        apply_b_dec_to_input=f.apply_b_dec_to_input,
        name=name,
        dtype=dtype,
        device=device,
        init=False,
        input_norm=f.input_norm,
    )

    def param(t: torch.Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(t.to(device=device, dtype=dtype).contiguous())

    sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec = param(W_enc), param(b_enc), param(W_dec), param(b_dec)
    if sae.threshold is not None:
        t = threshold if threshold is not None else torch.zeros(())
        sae.threshold = t.to(device=device, dtype=dtype).reshape(sae.threshold.shape).clone()
    sae.source_format = f.format
    sae.load_notes = list(f.notes)
    sae.load_report = f.report
    return sae


def load_sae(
    source: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    name: str | None = None,
    format: str | None = None,
    hookpoint: str | None = None,
    hook_name: str | None = None,
    norm_scaling_factor: float | None = None,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> SAE:
    """Load one SAE from `source`: a directory or file in any layout of stitchkit.sae.formats, an
    hf://REPO_ID[@REV]/PATH or a saelens:RELEASE/SAE_ID (stitchkit.sae.sources).

    format:      force a layout by its name (formats.BY_NAME) instead of detecting it
    hookpoint:   the hookpoint folder of a sparsify checkpoint directory
    hook_name:   the hook the SAE reads, where the file does not say (Gemma Scope, OpenAI)
    norm_scaling_factor: the input scale of an SAELens "expected_average_only_in" SAE (a
                 saelens: name supplies the registry's)
    Returns an SAE in eval mode on `device`, in the file's dtype unless `dtype` is given, named
    `name`, else the name stitchkit saved, else the source's folder. `sae.source_format` names the
    layout read, `sae.load_notes` what was rewritten or stated, `sae.load_report` (a
    formats.LoadReport) every field and tensor read or left unread, the rewrites and the oracle;
    verbose=True prints that report to stderr. Raises SAEFormatError (or a
    ShapeError, NonFiniteError, UnsupportedError) naming the file and field when anything is off.
    """
    r = resolve(source)
    path = r.path / hookpoint if hookpoint else r.path
    if hookpoint and not path.is_dir():
        raise SAEFormatError(f"{r.path}: no hookpoint folder {hookpoint!r}")
    options = dict(r.options)
    if norm_scaling_factor is not None:
        options["norm_scaling_factor"] = norm_scaling_factor
    f = formats.read(path, format=format, **options)
    root = path if path.is_dir() else path.parent
    meta_path = root / STITCHKIT_META
    meta = read_json(meta_path) if path.is_dir() and meta_path.is_file() else {}
    if meta.get("activation") == "batchtopk" and f.activation == "jumprelu":
        f.activation, f.k = "batchtopk", meta.get("k")
    if "l1_coefficient" in meta:
        f.l1_coefficient = float(meta["l1_coefficient"])
    if meta.get("input_norm") in ("layer_norm", "unit_norm"):
        f.input_norm = meta["input_norm"]
    if hook_name is not None:
        f.hook_name = hook_name
    sae = build(f, name=name or meta.get("name") or f.name or r.name, device=device, dtype=dtype)
    prov_path = root / PROVENANCE_FILE
    if path.is_dir() and prov_path.is_file():
        sae.set_provenance(_read_provenance(prov_path, f.d_sae))
    else:
        sae.set_provenance(Provenance.identity(sae.name, f.d_sae))
    if verbose and sae.load_report is not None:
        print(sae.load_report.text(), file=sys.stderr)
    return sae


def _read_provenance(path: Path, d_sae: int) -> Provenance:
    tensors, meta = read_safetensors(path)
    try:
        sources = tuple(json.loads(meta["sources"]))
    except (KeyError, json.JSONDecodeError) as e:
        raise SAEFormatError(f"{path}: metadata 'sources' must be a JSON list of names") from e
    for key in ("source_id", "index"):
        if key not in tensors or tuple(tensors[key].shape) != (d_sae,):
            raise SAEFormatError(
                f"{path}: tensor {key!r} must have shape ({d_sae},), "
                f"found {tuple(tensors[key].shape) if key in tensors else 'nothing'}"
            )
    try:
        return Provenance(sources, tensors["source_id"].long(), tensors["index"].long())
    except ShapeError as e:
        raise SAEFormatError(f"{path}: {e}") from e


def saelens_cfg(sae: SAE) -> dict:
    """The cfg.json SAELens 6 reads for this SAE (formats.saelens.cfg_for)."""
    return saelens.cfg_for(sae)


# Every file an SAE directory of stitchkit's holds (train_family adds its record).
SAE_FILES = (saelens.WEIGHTS, saelens.CFG, STITCHKIT_META, PROVENANCE_FILE, "stitchkit_train.json")


def save_sae(sae: SAE, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write `sae` to directory `path` in the SAELens 6 layout (plus stitchkit's two files).

    Atomic: everything is written to a temporary sibling directory first; an existing
    directory at `path` is only replaced once the new one is complete. `path` must be new or
    empty, or an SAE directory stitchkit saved holding only its own files (replaced only with
    `overwrite`); anything else raises OutputError and nothing is written (stitchkit.atomic).
    """

    from .. import dist
    from ..atomic import writes

    path = Path(path)
    check_save_target(path, fn="save_sae", overwrite=overwrite)
    try:
        if writes():  # rank 0 writes; every rank returns once it is written (stitchkit.atomic)
            _save_dir(sae, path)
    finally:
        dist.barrier()
    return path


def check_save_target(path: str | os.PathLike, *, fn: str, overwrite: bool) -> None:
    """Whether save_sae may write `path` (atomic.check_sae_dir with this layout's files), decided
    on the writer and shared by every rank; raises OutputError. Callers that do work before
    saving (the CLI) ask first."""
    from ..atomic import check_sae_dir, decided

    decided(lambda: check_sae_dir(Path(path), fn=fn, overwrite=overwrite, own=SAE_FILES))


def remove_sae_dir(path: Path) -> None:
    """Remove an SAE directory stitchkit saved: its own files, then the directory if that leaves
    it empty (a file stitchkit did not write is never removed)."""
    if not (Path(path) / STITCHKIT_META).is_file():
        return
    for name in SAE_FILES:
        (Path(path) / name).unlink(missing_ok=True)
    try:
        Path(path).rmdir()
    except OSError:
        pass


def _save_dir(sae: SAE, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    shared_mode(tmp, directory=True)  # mkdtemp makes 0700: an SAE is shared like any directory
    try:
        save_file(saelens.weights_for(sae), str(tmp / saelens.WEIGHTS))
        (tmp / saelens.CFG).write_text(json.dumps(saelens.cfg_for(sae), indent=2))
        meta = {
            "format_version": FORMAT_VERSION,
            "name": sae.name,
            "activation": sae.activation,
            "k": sae.k,
            "l1_coefficient": sae.l1_coefficient,
            "input_norm": sae.input_norm,
        }
        (tmp / STITCHKIT_META).write_text(json.dumps(meta, indent=2))
        prov = sae.provenance
        save_file(
            {"source_id": prov.source_id.contiguous(), "index": prov.index.contiguous()},
            str(tmp / PROVENANCE_FILE),
            metadata={"sources": json.dumps(list(prov.sources))},
        )
        for f in tmp.iterdir():  # safetensors writes 0600
            shared_mode(f)
        replace_dir(tmp, path, SAE_FILES)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if type(e).__name__ == "SafetensorError" or (isinstance(e, OSError) and e.filename is None):
            raise OutputError(f"{path}: could not write the SAE ({str(e).splitlines()[0][:200]})") from e
        raise
