"""Llama Scope (OpenMOSS): `hyperparams.json` (d_model, d_sae, jump_relu_threshold, hook_point_in,
norm_activation, dataset_average_activation_norm.in) + `checkpoints/final.safetensors`
(encoder.weight [d_sae, d_model], encoder.bias, decoder.weight [d_model, d_sae], decoder.bias).

JumpReLU with one threshold for every feature, b_dec not subtracted at the input, trained on
inputs scaled dataset-wise by c = sqrt(d_model) / average input norm. As SAELens' llama_scope loader
and its fold read it: the threshold is jump_relu_threshold * c, and the constant c is folded into
W_enc, W_dec and b_dec, so the SAE reads the raw activations. Refused: per-token norms other than
dataset-wise, and a hook_point_out other than hook_point_in (a transcoder).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import SAEFile, fold_input_scale, int_field, read_json, read_safetensors, tensor

NAME = "llama-scope"
DESCRIBES = (
    "Llama Scope: hyperparams.json + checkpoints/final.safetensors (JumpReLU, dataset-wise norm folded)"
)
CFG = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
FILES = (CFG, WEIGHTS)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file()


def read(path: Path, **_) -> SAEFile:
    where = str(path / CFG)
    cfg = read_json(path / CFG)
    d_in = int_field(cfg, "d_model", where)
    d_sae = int_field(cfg, "d_sae", where)
    hook_in, hook_out = cfg.get("hook_point_in"), cfg.get("hook_point_out")
    if hook_out and hook_in and hook_out != hook_in:
        raise UnsupportedError(
            f"{where}: hook_point_out {hook_out!r} differs from hook_point_in: a transcoder"
        )
    theta = cfg.get("jump_relu_threshold")
    if not isinstance(theta, (int, float)) or not math.isfinite(theta):
        raise SAEFormatError(f"{where}: field 'jump_relu_threshold' must be a finite number, found {theta!r}")
    norm = cfg.get("norm_activation", "dataset-wise")
    c = 1.0
    if norm == "dataset-wise":
        avg = (cfg.get("dataset_average_activation_norm") or {}).get("in")
        if not isinstance(avg, (int, float)) or not math.isfinite(avg) or avg <= 0:
            raise SAEFormatError(
                f"{where}: field 'dataset_average_activation_norm.in' must be a positive "
                f"number, found {avg!r}"
            )
        c = math.sqrt(d_in) / avg
    elif norm not in ("none", None):
        raise UnsupportedError(f"{where}: norm_activation {norm!r} is not supported, expected 'dataset-wise'")
    wh = str(path / WEIGHTS)
    raw, _ = read_safetensors(path / WEIGHTS)
    t = {
        "W_enc": tensor(raw, "encoder.weight", wh).t(),
        "b_enc": tensor(raw, "encoder.bias", wh),
        "W_dec": tensor(raw, "decoder.weight", wh).t(),
        "b_dec": tensor(raw, "decoder.bias", wh),
    }
    t["threshold"] = torch.full((d_sae,), float(theta) * c, dtype=torch.float64)
    notes = []
    if c != 1.0:
        fold_input_scale(t, c)
        notes.append(
            f"dataset-wise input scale {c:.6g} folded into W_enc, W_dec, b_dec (threshold x {c:.6g})"
        )
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation="jumprelu",
        tensors=t,
        hook_name=hook_in,
        apply_b_dec_to_input=False,
        dtype=raw["encoder.weight"].dtype,
        name=path.name,
        notes=notes,
    )
