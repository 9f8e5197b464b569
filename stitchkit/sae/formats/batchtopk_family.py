"""The BatchTopK family layout (bartbussmann/BatchTopK and the SAEs trained with it): config.json
or Config.json (act_size, dict_size, top_k, sae_type, hook_point, ...) + one .safetensors file.

sae_type vanilla is relu, topk is topk, batchtopk is batchtopk with its scalar threshold where the
file has one, jumprelu is jumprelu (threshold or log_threshold). Tied weights give W_dec = W_enc^T;
use_encoder_bias false gives b_enc = 0. Refused: input_unit_norm (a per-token normalisation the
layout does not state how to undo), activations other than relu.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import SAEFile, int_field, parse_dtype, read_json, read_safetensors, tensor

NAME = "batchtopk-family"
DESCRIBES = "BatchTopK family: config.json/Config.json (act_size, dict_size, sae_type) + one .safetensors"
CFGS = ("config.json", "Config.json")
_NOT_WEIGHTS = ("stitchkit_provenance.safetensors", "sparsity.safetensors")
TYPES = {"vanilla": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu"}


def _cfg_path(path: Path) -> Path | None:
    return next((path / n for n in CFGS if (path / n).is_file()), None)


def detect(path: Path) -> bool:
    if not path.is_dir() or (cfg := _cfg_path(path)) is None:
        return False
    try:
        return "act_size" in read_json(cfg)
    except SAEFormatError:
        return False


def read(path: Path, **_) -> SAEFile:
    cfg_path = _cfg_path(path)
    where = str(cfg_path)
    cfg = read_json(cfg_path)
    d_in = int_field(cfg, "act_size", where)
    d_sae = int_field(cfg, "dict_size", where)
    sae_type = cfg.get("sae_type", "topk")
    if sae_type not in TYPES:
        raise UnsupportedError(
            f"{where}: sae_type {sae_type!r} is not supported, expected one of {sorted(TYPES)}"
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
    activation = TYPES[sae_type]
    k = int_field(cfg, "top_k", where) if activation in ("topk", "batchtopk") else None

    candidates = [p for p in sorted(path.glob("*.safetensors")) if p.name not in _NOT_WEIGHTS]
    if len(candidates) != 1:
        raise SAEFormatError(
            f"{path}: BatchTopK family layout expects exactly one weights .safetensors file, "
            f"found {[p.name for p in candidates]}"
        )
    weights = candidates[0]
    wh = str(weights)
    raw, _ = read_safetensors(weights)
    W_enc = tensor(raw, "W_enc", wh)
    t = {"W_enc": W_enc, "b_dec": tensor(raw, "b_dec", wh)}
    if cfg.get("tied_weights", False) and "W_dec" not in raw:
        t["W_dec"] = W_enc.t().contiguous()
    else:
        t["W_dec"] = tensor(raw, "W_dec", wh)
    if cfg.get("use_encoder_bias", True) is False:
        t["b_enc"] = torch.zeros(d_sae, dtype=W_enc.dtype)
    else:
        t["b_enc"] = tensor(raw, "b_enc", wh)
    if activation == "jumprelu":
        if "threshold" in raw:
            t["threshold"] = tensor(raw, "threshold", wh)
        else:
            t["threshold"] = tensor(raw, "log_threshold", wh).double().exp()
    elif activation == "batchtopk":
        for key in ("threshold", "topk_threshold"):
            if key in raw:
                t["threshold"] = tensor(raw, key, wh)
                break
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        tensors=t,
        k=k,
        hook_name=cfg.get("hook_point") or cfg.get("hook_name"),
        dtype=parse_dtype(cfg["dtype"], where) if cfg.get("dtype") else None,
        l1_coefficient=float(cfg.get("l1_coeff") or 0.0),
    )
