"""SAE files: the SAELens directory layout, older SAELens configs, and the BatchTopK family layout.

Written (and read) layout, as SAELens documents it:
    <dir>/cfg.json                   architecture, d_in, d_sae, dtype, device, apply_b_dec_to_input,
                                     normalize_activations, metadata.hook_name, and k for topk
    <dir>/sae_weights.safetensors    W_enc, b_enc, W_dec, b_dec (+ threshold for jumprelu)
stitchkit adds two files SAELens ignores:
    <dir>/stitchkit.json             name, activation (batchtopk is saved as SAELens saves it for
                                     inference: jumprelu with its threshold), k, l1_coefficient
    <dir>/stitchkit_provenance.safetensors   source_id, index [d_sae] + source names in metadata

Also read: older SAELens cfg keys (hook_point, activation_fn_str, activation_fn_kwargs,
expansion_factor, "torch.float32" dtypes) and the BatchTopK family layout (config.json or
Config.json with act_size, dict_size, top_k, sae_type, hook_point + one .safetensors file).
Saving is atomic: files go to a temporary sibling directory that replaces the target by rename.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import replace_dir
from ..errors import NonFiniteError, SAEFormatError, ShapeError, UnsupportedError
from .activations import ACTIVATIONS
from .model import SAE
from .provenance import Provenance

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
STITCHKIT_META = "stitchkit.json"
PROVENANCE_FILE = "stitchkit_provenance.safetensors"
BATCHTOPK_CFGS = ("config.json", "Config.json")
FORMAT_VERSION = 1

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


# -- reading --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise SAEFormatError(f"{path}: cannot read ({e.strerror})") from e
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise SAEFormatError(f"{path}: weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise SAEFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def _parse_dtype(value: Any, where: str) -> torch.dtype:
    key = str(value).removeprefix("torch.")
    if key not in _DTYPES:
        raise SAEFormatError(f"{where}: dtype {value!r} is unknown, expected one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def _int_field(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SAEFormatError(f"{where}: field {key!r} must be a positive integer, found {value!r}")
    return value


def _spec_from_saelens(cfg: dict, where: str) -> dict[str, Any]:
    """Map a SAELens cfg.json (any version) onto SAE constructor arguments."""
    d_in = _int_field(cfg, "d_in", where)
    if cfg.get("d_sae") is None and isinstance(cfg.get("expansion_factor"), int):
        d_sae = d_in * cfg["expansion_factor"]
    else:
        d_sae = _int_field(cfg, "d_sae", where)
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    if arch == "standard":
        activation = "topk" if act_fn == "topk" else "relu"
        if act_fn not in ("relu", "topk"):
            raise UnsupportedError(
                f"{where}: activation_fn_str {act_fn!r} is not supported, expected relu or topk"
            )
    elif arch in ("topk", "batchtopk", "jumprelu"):
        activation = arch
    else:
        raise UnsupportedError(
            f"{where}: architecture {arch!r} is not supported, expected one of "
            "standard, topk, batchtopk, jumprelu (SAELens layout)"
        )
    if ACTIVATIONS[activation].needs_k:
        if not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0 or int(k) != k:
            raise SAEFormatError(f"{where}: architecture {activation!r} needs an integer k > 0, found {k!r}")
        k = int(k)
    else:
        k = None
    norm = cfg.get("normalize_activations")
    if norm not in (None, False, "none"):
        raise UnsupportedError(
            f"{where}: normalize_activations={norm!r} needs a scaling factor that is not part of "
            "the SAE files; expected 'none'"
        )
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    return dict(
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        k=k,
        hook_name=cfg.get("hook_name") or meta.get("hook_name") or cfg.get("hook_point"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        dtype=_parse_dtype(cfg.get("dtype", "float32"), where),
        l1_coefficient=float(cfg.get("l1_coefficient") or 0.0),
    )


def _spec_from_batchtopk_family(cfg: dict, where: str) -> dict[str, Any]:
    """Map the BatchTopK family's config.json onto SAE constructor arguments."""
    d_in = _int_field(cfg, "act_size", where)
    d_sae = _int_field(cfg, "dict_size", where)
    sae_type = cfg.get("sae_type", "topk")
    types = {"vanilla": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu"}
    if sae_type not in types:
        raise UnsupportedError(
            f"{where}: sae_type {sae_type!r} is not supported, expected one of {sorted(types)}"
        )
    if cfg.get("input_unit_norm"):
        raise UnsupportedError(
            f"{where}: input_unit_norm=true normalises each input per token, which stitchkit's "
            "SAE does not model; expected false"
        )
    if cfg.get("activation", "relu") != "relu":
        raise UnsupportedError(
            f"{where}: activation {cfg.get('activation')!r} is not supported, expected 'relu'"
        )
    activation = types[sae_type]
    k = None
    if ACTIVATIONS[activation].needs_k:
        k = cfg.get("top_k")
        if not isinstance(k, int) or k <= 0:
            raise SAEFormatError(f"{where}: sae_type {sae_type!r} needs an integer top_k > 0, found {k!r}")
    return dict(
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        k=k,
        hook_name=cfg.get("hook_point") or cfg.get("hook_name"),
        apply_b_dec_to_input=True,
        dtype=_parse_dtype(cfg.get("dtype", "float32"), where),
        l1_coefficient=float(cfg.get("l1_coeff") or 0.0),
        _use_encoder_bias=cfg.get("use_encoder_bias", True),
        _tied=cfg.get("tied_weights", False),
    )


def _check_tensor(tensors: dict, key: str, shape: tuple[int, ...], path: Path, cfg_name: str) -> torch.Tensor:
    if key not in tensors:
        raise SAEFormatError(f"{path}: tensor {key!r} is missing (found {sorted(tensors)})")
    t = tensors[key]
    if tuple(t.shape) != shape:
        hint = ""
        if key in ("W_enc", "W_dec", "b_dec") and t.dim() >= 1:
            hint = f"; does d_in/d_sae in {cfg_name} match the weights?"
        raise ShapeError(f"{path}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}{hint}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteError(f"{path}: tensor {key!r} holds {bad} NaN/Inf values, expected finite")
    return t


def load_sae(path: str | os.PathLike, *, device: torch.device | str = "cpu", name: str | None = None) -> SAE:
    """Load an SAE directory (SAELens layout, older SAELens cfgs, or the BatchTopK family layout).

    Returns an SAE in eval mode on `device`, in the file's dtype. Its name is `name`, else the
    one stitchkit saved, else the directory's name. Raises SAEFormatError (or a ShapeError,
    NonFiniteError, UnsupportedError) naming the file and field when anything is off.
    """
    path = Path(path)
    if not path.exists():
        raise SAEFormatError(f"{path}: SAE directory does not exist")
    if not path.is_dir():
        raise SAEFormatError(f"{path}: expected an SAE directory (with {SAELENS_CFG}), found a file")

    extra_cfg = {}
    if (path / SAELENS_CFG).is_file():
        cfg_path = path / SAELENS_CFG
        cfg = _read_json(cfg_path)
        spec = _spec_from_saelens(cfg, str(cfg_path))
        weights_path = path / SAELENS_WEIGHTS
    else:
        found = [n for n in BATCHTOPK_CFGS if (path / n).is_file()]
        if not found:
            raise SAEFormatError(
                f"{path}: no {SAELENS_CFG} (SAELens layout: cfg.json + {SAELENS_WEIGHTS}) and no "
                f"config.json/Config.json (BatchTopK family layout) found; "
                f"directory holds {sorted(p.name for p in path.iterdir())}"
            )
        cfg_path = path / found[0]
        cfg = _read_json(cfg_path)
        spec = _spec_from_batchtopk_family(cfg, str(cfg_path))
        candidates = sorted(path.glob("*.safetensors"))
        candidates = [p for p in candidates if p.name not in (PROVENANCE_FILE, "sparsity.safetensors")]
        if len(candidates) != 1:
            raise SAEFormatError(
                f"{path}: BatchTopK family layout expects exactly one weights .safetensors file, "
                f"found {[p.name for p in candidates]}"
            )
        weights_path = candidates[0]
        extra_cfg = {"use_encoder_bias": spec.pop("_use_encoder_bias"), "tied": spec.pop("_tied")}

    meta_path = path / STITCHKIT_META
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if meta.get("activation") == "batchtopk" and spec["activation"] == "jumprelu":
        spec["activation"], spec["k"] = "batchtopk", meta.get("k")
    if "l1_coefficient" in meta:
        spec["l1_coefficient"] = float(meta["l1_coefficient"])

    tensors, _ = _read_safetensors(weights_path)
    d_in, d_sae = spec["d_in"], spec["d_sae"]
    if extra_cfg.get("tied") and "W_dec" not in tensors and "W_enc" in tensors:
        tensors["W_dec"] = tensors["W_enc"].t().contiguous()
    W_enc = _check_tensor(tensors, "W_enc", (d_in, d_sae), weights_path, cfg_path.name)
    W_dec = _check_tensor(tensors, "W_dec", (d_sae, d_in), weights_path, cfg_path.name)
    b_dec = _check_tensor(tensors, "b_dec", (d_in,), weights_path, cfg_path.name)
    if extra_cfg.get("use_encoder_bias") is False:
        b_enc = torch.zeros(d_sae, dtype=W_enc.dtype)
    else:
        b_enc = _check_tensor(tensors, "b_enc", (d_sae,), weights_path, cfg_path.name)
    scale = tensors.get("scaling_factor")
    if scale is not None and not torch.all(scale == 1):
        raise UnsupportedError(
            f"{weights_path}: tensor 'scaling_factor' is not all ones (a SAELens fine-tuning "
            "scale); stitchkit expects unscaled features"
        )

    threshold = None
    act = spec["activation"]
    shape = ACTIVATIONS[act].threshold_shape
    if shape == "feature":
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors["log_threshold"].exp()
        threshold = _check_tensor(tensors, "threshold", (d_sae,), weights_path, cfg_path.name)
    elif shape == "scalar":  # batchtopk: one learned threshold, or d_sae equal copies of it
        for key in ("threshold", "topk_threshold"):
            if key in tensors:
                t = tensors[key].reshape(-1)
                if not torch.isfinite(t).all() or len(t) not in (1, d_sae) or not torch.all(t == t[0]):
                    raise SAEFormatError(
                        f"{weights_path}: batchtopk tensor {key!r} must be one finite value "
                        f"(or {d_sae} equal ones), found shape {tuple(tensors[key].shape)}"
                    )
                threshold = t[0]
                break

    sae = SAE(
        d_in,
        d_sae,
        act,
        k=spec["k"],
        l1_coefficient=spec["l1_coefficient"],
        hook_name=spec["hook_name"],
        apply_b_dec_to_input=spec["apply_b_dec_to_input"],
        name=name or meta.get("name") or path.name,
        dtype=spec["dtype"],
        device=device,
        init=False,
    )

    # The tensors read from the file become the parameters: no second copy of the weights.
    def param(t: torch.Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(t.to(device=device, dtype=spec["dtype"]).contiguous())

    sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec = param(W_enc), param(b_enc), param(W_dec), param(b_dec)
    if sae.threshold is not None:
        t = threshold if threshold is not None else torch.zeros(())
        sae.threshold = t.to(device=device, dtype=spec["dtype"]).reshape(sae.threshold.shape).clone()

    prov_path = path / PROVENANCE_FILE
    if prov_path.is_file():
        sae.set_provenance(_read_provenance(prov_path, d_sae))
    else:
        sae.set_provenance(Provenance.identity(sae.name, d_sae))
    return sae


def _read_provenance(path: Path, d_sae: int) -> Provenance:
    tensors, meta = _read_safetensors(path)
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


# -- writing --------------------------------------------------------------------------------


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The cfg.json dict SAELens reads for this SAE (Activation.saelens_architecture: batchtopk is
    written as jumprelu)."""
    arch = sae.act.saelens_architecture
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hook_name": sae.hook_name,
        "metadata": {"hook_name": sae.hook_name},
    }
    if arch == "topk":
        cfg["k"] = sae.k
    return cfg


def save_sae(sae: SAE, path: str | os.PathLike) -> Path:
    """Write `sae` to directory `path` in the SAELens layout (plus stitchkit's two files).

    Atomic: everything is written to a temporary sibling directory first; an existing
    directory at `path` is only replaced once the new one is complete.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        tensors = {
            "W_enc": sae.W_enc.detach(),
            "b_enc": sae.b_enc.detach(),
            "W_dec": sae.W_dec.detach(),
            "b_dec": sae.b_dec.detach(),
        }
        if sae.threshold is not None:
            tensors["threshold"] = sae.threshold.detach().expand(sae.d_sae)
        tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CFG).write_text(json.dumps(saelens_cfg(sae), indent=2))
        meta = {
            "format_version": FORMAT_VERSION,
            "name": sae.name,
            "activation": sae.activation,
            "k": sae.k,
            "l1_coefficient": sae.l1_coefficient,
        }
        (tmp / STITCHKIT_META).write_text(json.dumps(meta, indent=2))
        prov = sae.provenance
        save_file(
            {"source_id": prov.source_id.contiguous(), "index": prov.index.contiguous()},
            str(tmp / PROVENANCE_FILE),
            metadata={"sources": json.dumps(list(prov.sources))},
        )
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
