"""SAELens: `cfg.json` + `sae_weights.safetensors`, every SAELens 6 architecture, older (pre-6)
configs, and training checkpoints (batchtopk, matryoshka_batchtopk). stitchkit writes this layout.

Read exactly (SAELens 6.54's own encode/decode are the oracle, scripts/check_peers.py):
    standard   relu (pre-6 configs: activation_fn "topk" with activation_fn_kwargs.k is topk)
    topk       topk with k; rescale_acts_by_decoder_norm folded into the weights
    jumprelu   jumprelu with its per-feature threshold
    gated      the gated encoder rewritten as a JumpReLU of its magnitude path (formats._common)
    batchtopk, matryoshka_batchtopk (training checkpoints: topk_threshold, SAELens' inference
               rule; matryoshka's nested prefixes change training only)
normalize_activations: "none"; "expected_average_only_in" folded with its norm_scaling_factor
(the release registry's, or load_sae(..., norm_scaling_factor=c)); "layer_norm" and
"constant_norm_rescale" stated as SAE.input_norm. Refused, with the reason: transcoders and skip
transcoders, temporal and matching-pursuit SAEs, abstopk, covariance whitening, a fine-tuning
scaling factor other than ones.

Each cfg.json field: what SAELens 6.54.12 (SAE.load_from_disk, handle_config_defaulting, the
architectures' encode/decode) does with it -> what stitchkit does.
- architecture: the SAE class -> the activation above; transcoders and the others refused.
- d_in, d_sae (pre-6: expansion_factor): sizes -> read.
- k: topk's k (default 100 where absent) -> read; absent refused. A pre-6 config's
  activation_fn_kwargs.k wins over it, as SAELens converts pre-6 configs.
- activation_fn / activation_fn_str (pre-6 only: "topk" with activation_fn_kwargs.k is
  architecture topk; in a 6.x config SAELens ignores it) -> pre-6 relu and topk read; other values
  refused, and a 6.x standard config that names a non-ReLU one is refused as contradictory.
- rescale_acts_by_decoder_norm (topk, batchtopk): gates pre * |W_dec| and decodes f / |W_dec| ->
  folded into the weights after any input scale, as SAELens folds c first; absent is false (the
  6.0-6.12 checkpoints without the key trained without it).
- apply_b_dec_to_input: x - b_dec at the input -> read.
- normalize_activations: above; with a scale factor c and the rescale, a batchtopk threshold is
  divided by c, as SAELens' BatchTopK fold does.
- dtype: the weights' dtype -> read. metadata.hook_name (pre-6 hook_point): the hook -> read.
- l1_coefficient: training -> kept as SAE.l1_coefficient (a label).
- tensors: W_enc, b_enc, W_dec, b_dec, threshold / log_threshold, topk_threshold, gated's
  b_gate, b_mag, r_mag -> read; scaling_factor / finetuning_scaling_factor all ones ignored,
  otherwise refused.
- reshape_activations ("hook_z"): flattens heads in and out, in the order stitchkit reads the
  flattened vector -> not read. metadata (model_name, hook_head_index, context_size, dataset
  and tokenisation fields, versions, training_architecture), device and the training fields
  (NOT_READ): which activations are collected, or training -> not read.

Written: cfg.json in SAELens 6's form (metadata.sae_lens_version marks it, so SAELens does not
take it for a pre-6.0 config), sae_weights.safetensors, plus stitchkit.json (name, activation, k,
l1_coefficient, input_norm) and stitchkit_provenance.safetensors, which SAELens ignores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import (
    SAEFile,
    fold_decoder_norm,
    fold_input_scale,
    gated_as_jumprelu,
    int_field,
    parse_dtype,
    read_json,
    read_safetensors,
    tensor,
)

NAME = "saelens"
DESCRIBES = (
    "SAELens directory: cfg.json + sae_weights.safetensors (any SAELens 6 architecture, pre-6 configs)"
)
CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
STITCHKIT_META = "stitchkit.json"
PROVENANCE_FILE = "stitchkit_provenance.safetensors"
LAYOUT_VERSION = "6.0.0"  # the SAELens cfg.json layout stitchkit writes
FILES = (CFG, WEIGHTS, STITCHKIT_META, PROVENANCE_FILE)

ORACLE = "SAELens 6.54.12: its save_model / save_inference_model, then load_from_disk + encode/forward"
NOT_READ = (
    "reshape_activations", "device", "sae_lens_version", "sae_lens_training_version",
    "training_architecture", "training_architecture_details", "model_name", "model_class_name",
    "hook_head_index", "hook_point_head_index", "hook_layer", "hook_point_layer",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "context_size",
    "seqpos_slice", "dataset_path", "dataset_trust_remote_code", "neuronpedia_id", "l0",
    "num_dead_features", "topk_threshold_lr", "matryoshka_widths", "use_matryoshka_aux_loss",
    "aux_loss_coefficient", "use_sparse_activations", "decoder_init_norm", "lp_norm",
    "l1_warm_up_steps", "jumprelu_init_threshold", "jumprelu_bandwidth",
    "jumprelu_sparsity_loss_mode", "l0_coefficient", "l0_warm_up_steps",
    "pre_act_loss_coefficient", "jumprelu_tanh_scale", "jumprelu_ste_to_input", "target_l0",
    "b_dec_init_method", "expansion_factor", "activation_fn_kwargs", "k", "hook_name",
    "hook_point", "finetuning_scaling_factor", "activation_fn", "activation_fn_str",
    "rescale_acts_by_decoder_norm", "metadata",
)  # fmt: skip
_REFUSED = {
    "transcoder": "a transcoder reconstructs another hook's activations than it reads",
    "skip_transcoder": "a skip transcoder adds a linear skip path and reads another hook",
    "jumprelu_transcoder": "a transcoder reconstructs another hook's activations than it reads",
    "jumprelu_skip_transcoder": "a skip transcoder adds a linear skip path and reads another hook",
    "temporal": "a temporal SAE's codes depend on earlier tokens",
    "matching_pursuit": "matching pursuit encodes by iterated residual selection, not one affine map",
    "abstopk": "abstopk keeps negative features, and stitchkit's features are non-negative",
}


def detect(path: Path) -> bool:
    if not (path.is_dir() and (path / CFG).is_file()):
        return False
    if (path / WEIGHTS).is_file():
        return True
    try:
        cfg = read_json(path / CFG)
    except SAEFormatError:
        return False
    return "d_sae" in cfg or "architecture" in cfg


def _k(value: Any, where: str) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SAEFormatError(f"{where}: this architecture needs an integer k > 0, found {value!r}")
    if value <= 0 or int(value) != value:
        raise SAEFormatError(f"{where}: this architecture needs an integer k > 0, found {value!r}")
    return int(value)


def read(path: Path, *, norm_scaling_factor: float | None = None, **_) -> SAEFile:
    cfg_path = path / CFG
    where = str(cfg_path)
    cfg = read_json(cfg_path)
    d_in = int_field(cfg, "d_in", where)
    if cfg.get("d_sae") is None and isinstance(cfg.get("expansion_factor"), int):
        d_sae = d_in * cfg["expansion_factor"]
    else:
        d_sae = int_field(cfg, "d_sae", where)
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    for key, value in (("architecture", arch), ("activation_fn", act_fn)):
        if not isinstance(value, str):
            raise SAEFormatError(f"{where}: field {key!r} must be a string, found {value!r}")
    if not isinstance(kwargs, dict):
        raise SAEFormatError(f"{where}: field 'activation_fn_kwargs' must be an object, found {kwargs!r}")
    if arch in _REFUSED:
        raise UnsupportedError(f"{where}: architecture {arch!r} cannot be read: {_REFUSED[arch]}")
    pre6 = _pre_6(cfg)
    if arch == "standard" and act_fn != "relu" and not pre6:
        # SAELens 6 reads activation_fn only in a pre-6.0 config (handle_config_defaulting), and
        # runs such a file as ReLU: a contradiction stitchkit does not guess through.
        raise UnsupportedError(
            f"{where}: activation_fn {act_fn!r} in a SAELens 6 config: SAELens 6 ignores it and "
            "runs architecture 'standard' as ReLU; expected architecture 'topk' for a TopK SAE"
        )
    if arch == "standard":
        if act_fn not in ("relu", "topk"):
            raise UnsupportedError(
                f"{where}: activation_fn {act_fn!r} is not supported, expected relu or topk"
            )
        activation = "topk" if act_fn == "topk" else "relu"
    elif arch in ("topk", "jumprelu", "gated"):
        activation = arch
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        activation = "batchtopk"
    else:
        raise UnsupportedError(
            f"{where}: architecture {arch!r} is unknown, expected one of standard, topk, jumprelu, gated, "
            "batchtopk, matryoshka_batchtopk (refused with a reason: " + ", ".join(_REFUSED) + ")"
        )
    k = None
    if activation in ("topk", "batchtopk"):
        # a pre-6.0 config's activation_fn_kwargs.k wins over a top-level k, as SAELens converts it
        k = _k(kwargs["k"] if pre6 and kwargs.get("k") is not None else cfg.get("k", kwargs.get("k")), where)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    notes: list[str] = []

    weights = path / WEIGHTS
    wh = str(weights)
    raw, _ = read_safetensors(weights)
    t = {
        "W_enc": tensor(raw, "W_enc", wh),
        "W_dec": tensor(raw, "W_dec", wh),
        "b_dec": tensor(raw, "b_dec", wh),
    }
    file_dtype = t["W_dec"].dtype
    scale = raw.get("scaling_factor", raw.get("finetuning_scaling_factor"))
    if scale is not None and not torch.all(scale == 1):
        raise UnsupportedError(
            f"{wh}: tensor 'scaling_factor' is not all ones (a SAELens fine-tuning scale on the "
            "features); stitchkit expects unscaled features"
        )
    if activation == "gated":
        gated = {k_: tensor(raw, k_, wh) for k_ in ("b_gate", "b_mag", "r_mag")}
        for k_, v in gated.items():
            if tuple(v.shape) != (d_sae,):
                raise SAEFormatError(f"{wh}: tensor {k_!r} has shape {tuple(v.shape)}, expected ({d_sae},)")
        if tuple(t["W_enc"].shape) != (d_in, d_sae):
            raise SAEFormatError(
                f"{wh}: tensor 'W_enc' has shape {tuple(t['W_enc'].shape)}, expected ({d_in}, {d_sae})"
            )
        t.update(gated_as_jumprelu(t["W_enc"], gated["b_gate"], gated["b_mag"], gated["r_mag"]))
        activation = "jumprelu"
        notes.append("gated encoder read as the JumpReLU of its magnitude path")
    else:
        t["b_enc"] = tensor(raw, "b_enc", wh)
    if activation == "jumprelu" and "threshold" not in t:
        if "threshold" in raw:
            t["threshold"] = tensor(raw, "threshold", wh)
        elif "log_threshold" in raw:
            t["threshold"] = tensor(raw, "log_threshold", wh).double().exp()
        else:
            raise SAEFormatError(f"{wh}: tensor 'threshold' is missing (a jumprelu SAE needs one)")
    if activation == "batchtopk":
        for key in ("topk_threshold", "threshold"):
            if key in raw:
                t["threshold"] = tensor(raw, key, wh)
                break

    # Absent: False. SAELens 6.54's training loader defaults it to True, but the 6.0-6.12
    # checkpoints that lack the key were trained without the rescale.
    rescale = bool(cfg.get("rescale_acts_by_decoder_norm")) and activation in ("topk", "batchtopk")
    norm = cfg.get("normalize_activations")
    input_norm = "none"
    if norm in (None, False, "none"):
        pass
    elif norm in (True, "expected_average_only_in"):
        if norm_scaling_factor is None:
            raise UnsupportedError(
                f"{where}: normalize_activations={norm!r} scales the input by a constant that is not "
                "in the SAE's files; pass it: load_sae(..., norm_scaling_factor=c) (a saelens: "
                "registry name supplies it where the registry lists one)"
            )
        c = float(norm_scaling_factor)
        fold_input_scale(t, c)
        notes.append(f"input scaling factor {c:.6g} folded into W_enc, W_dec, b_dec")
        if rescale and "threshold" in t and activation == "batchtopk":
            # SAELens' BatchTopK fold: the threshold is in units of pre * |W_dec|, and W_dec was
            # just divided by c
            t["threshold"] = t["threshold"].double() / c
    elif norm == "layer_norm":
        input_norm = "layer_norm"
    elif norm == "constant_norm_rescale":
        input_norm = "unit_norm"
    else:
        raise UnsupportedError(
            f"{where}: normalize_activations={norm!r} is not supported, expected none, "
            "expected_average_only_in, layer_norm or constant_norm_rescale"
        )
    if input_norm != "none":
        notes.append(f"input normalised per token ({norm}): stated as SAE.input_norm={input_norm!r}")
    if rescale:  # after the input scale, as SAELens folds them (its fold divides W_dec by c first)
        fold_decoder_norm(t)
        notes.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc, W_dec")

    dtype_cfg = cfg.get("dtype")
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        tensors=t,
        k=k,
        hook_name=meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        dtype=parse_dtype(dtype_cfg, where) if dtype_cfg else file_dtype,
        l1_coefficient=float(cfg.get("l1_coefficient") or 0.0),
        input_norm=input_norm,
        notes=notes,
    )


def _pre_6(cfg: dict) -> bool:
    """Whether SAELens takes the config for a pre-6.0 one: no sae_lens_version (top-level or in
    metadata), or one below 6."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    try:
        return not version or int(str(version).split(".")[0]) < 6
    except ValueError:
        return True


def cfg_for(sae) -> dict[str, Any]:
    """The cfg.json SAELens 6 reads for `sae` (Activation.saelens_architecture: batchtopk is
    written as jumprelu with its threshold, SAELens' inference form)."""
    arch = sae.act.saelens_architecture
    meta: dict[str, Any] = {"sae_lens_version": LAYOUT_VERSION}
    if sae.hook_name:
        meta["hook_name"] = sae.hook_name
    norm = {"none": "none", "layer_norm": "layer_norm", "unit_norm": "constant_norm_rescale"}[sae.input_norm]
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "metadata": meta,
    }
    if arch == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg


def weights_for(sae) -> dict[str, torch.Tensor]:
    tensors = {
        "W_enc": sae.W_enc.detach(),
        "b_enc": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().expand(sae.d_sae)
    return {k: v.cpu().contiguous() for k, v in tensors.items()}
