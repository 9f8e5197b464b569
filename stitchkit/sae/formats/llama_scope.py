"""Llama Scope (OpenMOSS): `hyperparams.json` + `checkpoints/final.safetensors` (encoder.weight
[d_sae, d_model], encoder.bias, decoder.weight [d_model, d_sae], decoder.bias), as the code that
wrote the released files reads them: lm_saes (OpenMOSS/Language-Model-SAEs) at commit 384b6e8c
(2024-11-04; its load and forward match 4ec6f0aa, "Mega Update: Llama Scope SAEs"),
`SparseAutoEncoder.from_config` then `forward`. SAELens' llama_scope loader is a second reader
and differs (it skips the decoder-norm rescale), so it is not the oracle.

lm_saes' load, in its order (a field absent from hyperparams.json takes SAEConfig's default):
  1. norm_activation "dataset-wise": with c_in, c_out = sqrt(d_model) / average norm ("in",
     "out"), b_enc /= c_in, b_dec /= c_out, W_dec *= c_in / c_out; the input is then read raw.
  2. sparsity_include_decoder_norm (default true): each feature's decoder norm n (after step 1)
     is folded in, W_enc *= n, b_enc *= n, W_dec /= n.
  3. the forward: x (times sqrt(d_model) / |x| per token for "token-wise"), minus b_dec where
     use_decoder_bias and apply_decoder_bias_to_pre_encoder (default true), through the encoder;
     jumprelu keeps pre where pre > jump_relu_threshold (one scalar, in the units of step 2,
     never rescaled), topk the top_k largest, relu max(pre, 0); decode f W_dec (+ b_dec).

Each field: what lm_saes (384b6e8c) does with it -> what stitchkit does.
- d_model, d_sae (or expansion_factor): sizes -> read (d_sae = d_model * expansion_factor when
  absent).
- act_fn (default relu): relu, jumprelu or topk; a topk file with a threshold > 0 is relabelled
  jumprelu in the config but still runs topk (its activation is built first) -> the same
  activation; anything else refused.
- jump_relu_threshold (default 0): compared strictly with the rescaled pre-activation -> every
  feature's threshold, unscaled; refused if negative (the kept value would be negative).
- top_k (default 50): k of topk, ranked by f times the loaded decoder norm -> k; topk without
  sparsity_include_decoder_norm is refused unless the decoder norms are 1.
- sparsity_include_decoder_norm (default true): step 2 at load -> step 2 in float64; a zero or
  non-finite decoder norm is refused.
- norm_activation (default token-wise): dataset-wise folded at load (step 1); token-wise scales
  each token to norm sqrt(d_model); inference / none: 1; batch-wise: per batch -> dataset-wise
  folded; token-wise as input_norm "unit_norm"; inference / none read raw; batch-wise refused.
- dataset_average_activation_norm: "in", "out" of step 1 -> the same; refused if either is
  missing or not positive.
- apply_decoder_bias_to_pre_encoder (default true): subtracts b_dec (after step 1) from the
  scaled input -> apply_b_dec_to_input.
- use_decoder_bias (default true): false means no decoder.bias (and dataset-wise then fails to
  load) -> b_dec 0; refused with dataset-wise, or with a decoder.bias present (lm_saes loads
  strictly).
- use_glu_encoder: a sigmoid gate on the pre-activation -> refused.
- hook_point_in, hook_point_out: a transcoder when they differ -> the hook name; a transcoder is
  refused.
- dtype: the loaded model's dtype -> the SAE's dtype (the file's when absent).
- decoder_exactly_fixed_norm, l1_coefficient, lp, init_*, k_warmup_steps, tp_size, ddp_size:
  training only -> not read.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import (
    Defaults,
    SAEFile,
    fold_decoder_norm,
    int_field,
    parse_dtype,
    read_json,
    read_safetensors,
    shaped_tensor,
)

NAME = "llama-scope"
DESCRIBES = (
    "Llama Scope (lm_saes): hyperparams.json + checkpoints/final.safetensors, read as lm_saes reads it"
)
CFG = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
FILES = (CFG, WEIGHTS)
ORACLE = "lm_saes (OpenMOSS/Language-Model-SAEs) 384b6e8c: from_config + forward, re-written in float64"

# Fields of lm_saes' SAEConfig that train the SAE and leave the loaded forward alone, and those
# read only for some activations (top_k, jump_relu_threshold) or sizes (expansion_factor beside
# d_sae).
NOT_READ = (
    "decoder_exactly_fixed_norm",
    "l1_coefficient",
    "l1_coefficient_warmup_steps",
    "lp",
    "init_decoder_norm",
    "init_encoder_norm",
    "init_encoder_with_decoder_transpose",
    "k_warmup_steps",
    "tp_size",
    "ddp_size",
    "device",
    "seed",
    "use_ghost_grads",
    "sae_type",
    "top_k",
    "jump_relu_threshold",
    "expansion_factor",
    "sae_name",
    "sae_pretrained_name_or_path",
    "strict_loading",
)

# SAEConfig's defaults at 384b6e8c, for fields a file leaves out.
DEFAULTS = Defaults(
    dict(
        act_fn="relu",
        jump_relu_threshold=0.0,
        top_k=50,
        sparsity_include_decoder_norm=True,
        apply_decoder_bias_to_pre_encoder=True,
        use_decoder_bias=True,
        norm_activation="token-wise",
        use_glu_encoder=False,
    )
)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file()


def _sizes(cfg: dict, where: str) -> tuple[int, int]:
    d_in = int_field(cfg, "d_model", where)
    if cfg.get("d_sae") is not None:
        return d_in, int_field(cfg, "d_sae", where)
    factor = cfg.get("expansion_factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise SAEFormatError(f"{where}: neither 'd_sae' nor a positive 'expansion_factor' is given")
    return d_in, int_field(cfg, "d_sae", where, value=d_in * factor)


def _scales(cfg: dict, d_in: int, where: str) -> tuple[float, float]:
    """c_in, c_out of a dataset-wise file."""
    avg = cfg.get("dataset_average_activation_norm")
    out = []
    for side in ("in", "out"):
        v = avg.get(side) if isinstance(avg, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise SAEFormatError(
                f"{where}: field 'dataset_average_activation_norm.{side}' must be a positive number "
                f"(norm_activation is 'dataset-wise'), found {v!r}"
            )
        out.append(math.sqrt(d_in) / v)
    return out[0], out[1]


def read(path: Path, **_) -> SAEFile:
    where = str(path / CFG)
    cfg = read_json(path / CFG)
    d_in, d_sae = _sizes(cfg, where)
    hook_in, hook_out = cfg.get("hook_point_in"), cfg.get("hook_point_out")
    if hook_out and hook_in and hook_out != hook_in:
        raise UnsupportedError(
            f"{where}: hook_point_out {hook_out!r} differs from hook_point_in: a transcoder"
        )
    if DEFAULTS.flag(cfg, "use_glu_encoder", where):
        raise UnsupportedError(
            f"{where}: use_glu_encoder is true: a gated (GLU) encoder has no SAE form here"
        )
    act = DEFAULTS.get(cfg, "act_fn")
    if act not in ("relu", "jumprelu", "topk"):
        raise UnsupportedError(f"{where}: act_fn {act!r} is not supported, expected relu, jumprelu or topk")
    theta = DEFAULTS.number(cfg, "jump_relu_threshold", where)
    norm = DEFAULTS.get(cfg, "norm_activation")
    if norm not in ("dataset-wise", "token-wise", "inference", "none"):
        raise UnsupportedError(
            f"{where}: norm_activation {norm!r} is not supported (batch-wise depends on the batch), "
            "expected dataset-wise, token-wise, inference or none"
        )
    rescale = DEFAULTS.flag(cfg, "sparsity_include_decoder_norm", where)
    use_bias = DEFAULTS.flag(cfg, "use_decoder_bias", where)
    pre_bias = DEFAULTS.flag(cfg, "apply_decoder_bias_to_pre_encoder", where)

    wh = str(path / WEIGHTS)
    raw, _ = read_safetensors(path / WEIGHTS)
    sizes = f"d_model {d_in}, d_sae {d_sae} in {CFG}"

    def read_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        return shaped_tensor(raw, key, shape, wh, sizes)

    t = {
        "W_enc": read_tensor("encoder.weight", (d_sae, d_in)).t(),
        "b_enc": read_tensor("encoder.bias", (d_sae,)),
        "W_dec": read_tensor("decoder.weight", (d_in, d_sae)).t(),
    }
    if use_bias:
        t["b_dec"] = read_tensor("decoder.bias", (d_in,))
    elif "decoder.bias" in raw:
        raise SAEFormatError(f"{wh}: holds 'decoder.bias' but {CFG} says use_decoder_bias is false")
    elif norm == "dataset-wise":
        raise UnsupportedError(
            f"{where}: use_decoder_bias false with norm_activation 'dataset-wise': lm_saes' own "
            "loader cannot load it (its dataset-norm fold reads decoder.bias)"
        )
    else:
        t["b_dec"] = torch.zeros(t["W_dec"].shape[1], dtype=torch.float64)
    dtype = parse_dtype(cfg["dtype"], where) if cfg.get("dtype") is not None else raw["encoder.weight"].dtype

    notes = []
    if norm == "dataset-wise":  # lm_saes: standardize_parameters_of_dataset_activation_scaling
        c_in, c_out = _scales(cfg, d_in, where)
        t["b_enc"] = t["b_enc"] / c_in
        t["b_dec"] = t["b_dec"] / c_out
        t["W_dec"] = t["W_dec"] * (c_in / c_out)
        notes.append(
            f"dataset-wise input scale folded as lm_saes folds it (c_in {c_in:.6g}, c_out {c_out:.6g})"
        )
    n = t["W_dec"].norm(dim=1)
    if rescale:  # lm_saes: transform_to_unit_decoder_norm, after the fold
        bad = ~((n > 0) & n.isfinite())
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise UnsupportedError(
                f"{wh}: feature {j} has a zero or non-finite decoder column (norm {float(n[j])}), "
                "which lm_saes' decoder-norm rescale divides by (sparsity_include_decoder_norm is true)"
            )
        fold_decoder_norm(t)
        notes.append(
            f"decoder norms folded into the encoder (sparsity_include_decoder_norm; norms "
            f"{float(n.min()):.4g}..{float(n.max()):.4g}), as lm_saes does at load"
        )

    k = None
    if act == "jumprelu":
        if theta < 0:
            raise UnsupportedError(
                f"{where}: jump_relu_threshold {theta} is negative: lm_saes then keeps negative "
                "pre-activations, which stitchkit's jumprelu does not"
            )
        t["threshold"] = torch.full((d_sae,), theta, dtype=torch.float64)
    elif act == "topk":
        k = int_field(cfg, "top_k", where, value=DEFAULTS.get(cfg, "top_k"))
        if not rescale and not torch.allclose(n, torch.ones_like(n), rtol=0, atol=1e-6):
            raise UnsupportedError(
                f"{where}: act_fn topk with sparsity_include_decoder_norm false and decoder norms "
                f"{float(n.min()):.4g}..{float(n.max()):.4g}: lm_saes ranks features by f |W_dec|, "
                "stitchkit's topk by f"
            )
        if theta > 0:
            notes.append(
                f"act_fn topk with jump_relu_threshold {theta}: run as topk, as lm_saes' loader "
                "runs it (it relabels the config only)"
            )
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation=act,
        k=k,
        tensors=t,
        hook_name=hook_in,
        apply_b_dec_to_input=use_bias and pre_bias,
        dtype=dtype,
        input_norm="unit_norm" if norm == "token-wise" else "none",
        name=path.name,
        notes=notes,
    )
