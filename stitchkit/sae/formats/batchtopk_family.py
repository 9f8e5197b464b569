"""The BatchTopK family layout (bartbussmann/BatchTopK and the SAEs trained with it): config.json
or Config.json (act_size, dict_size, top_k, sae_type, hook_point, ...) + the weights, `sae.pt` as
its logs.save_checkpoint writes them (torch.save of the state dict) or one .safetensors file (a
re-packed copy). Read as the writer's own forward (sae.py at b9aab1c, 2025-05-09, and its early
commits 3ce6538..18c2480) computes it; re-written in float64 in tests/sae/formats/.

The writer's forward, with x' = x, or (x - mean) / (std + 1e-5) per token (std unbiased) where
input_unit_norm, and the reconstruction mapped back as x_hat' * (std + 1e-5) + mean:
  vanilla    f = ReLU((x' - b_dec) W_enc + b_enc)
  topk       a = ReLU((x' - b_dec) W_enc), f = a on each token's top_k (b_enc is never added)
  batchtopk  the same a, kept on the top top_k * batch of the whole batch (no per-token rule)
  jumprelu   p = ReLU(x' W_enc + b_enc), f = p * 1[p > exp(log_threshold)] (b_dec not subtracted)
  x_hat' = f W_dec + b_dec
Early commits (configs with use_encoder_bias, tied_weights, activation): b_enc only where
use_encoder_bias, the decoder W_enc^T where tied_weights, and an activation field.

Each field: what the writer does with it -> what stitchkit does.
- act_size, dict_size: sizes -> read.
- sae_type (default topk): vanilla, topk, batchtopk, jumprelu -> relu, topk, batchtopk (only with
  a `threshold` or `topk_threshold` tensor, which a re-pack adds: the writer itself has no
  per-token rule), jumprelu (apply_b_dec_to_input false); others refused.
- top_k: k -> k.
- input_unit_norm (default true at b9aab1c): the per-token normalisation above -> input_norm
  "layer_norm" (the same formula); refused in an early-commit config, whose reconstruction adds
  the normalised input back instead of the mean.
- b_enc for topk and batchtopk: never added -> set to 0 (noted where the file's is not).
- use_encoder_bias (early): false drops b_enc -> the same.
- tied_weights (early): the decoder is W_enc^T and any saved W_dec is a stale initial value ->
  W_dec = W_enc^T.
- activation (early): relu and others -> relu read, others refused.
- log_threshold / jumprelu.log_threshold / threshold: the jumprelu threshold (exp of the log) ->
  the same.
- dtype -> the SAE's dtype. hook_point -> hook name. l1_coeff -> l1_coefficient (a label: for
  jumprelu the writer's coefficient weighs L0).
- bandwidth, top_k_aux, aux_penalty, n_batches_to_dead, seed, batch_size, lr, num_tokens, beta1,
  beta2, max_grad_norm, seq_len, model_batch_size, num_batches_in_buffer, dataset_path,
  wandb_project, perf_log_freq, checkpoint_freq, site, layer, model_name, name, device: training
  or labels -> not read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import SAEFile, int_field, parse_dtype, read_json, read_safetensors, read_torch, tensor

NAME = "batchtopk-family"
DESCRIBES = (
    "BatchTopK family: config.json/Config.json (act_size, dict_size, sae_type) + sae.pt or one .safetensors"
)
CFGS = ("config.json", "Config.json")
WEIGHTS_PT = "sae.pt"
_NOT_WEIGHTS = ("stitchkit_provenance.safetensors", "sparsity.safetensors")
TYPES = {"vanilla": "relu", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu"}
ORACLE = "bartbussmann/BatchTopK sae.py (b9aab1c and early commits) forward, re-written in float64"
EARLY_KEYS = ("use_encoder_bias", "tied_weights", "activation")
NOT_READ = (
    "bandwidth", "top_k_aux", "aux_penalty", "n_batches_to_dead", "seed", "batch_size", "lr",
    "num_tokens", "beta1", "beta2", "max_grad_norm", "seq_len", "model_batch_size",
    "num_batches_in_buffer", "dataset_path", "wandb_project", "perf_log_freq", "checkpoint_freq",
    "site", "layer", "model_name", "name", "device", "top_k", "hook_name",
)  # fmt: skip


def _cfg_path(path: Path) -> Path | None:
    return next((path / n for n in CFGS if (path / n).is_file()), None)


def detect(path: Path) -> bool:
    if not path.is_dir() or (cfg := _cfg_path(path)) is None:
        return False
    try:
        return "act_size" in read_json(cfg)
    except SAEFormatError:
        return False


def _weights(path: Path) -> tuple[dict, str]:
    candidates = [p for p in sorted(path.glob("*.safetensors")) if p.name not in _NOT_WEIGHTS]
    if (path / WEIGHTS_PT).is_file() and not candidates:
        return read_torch(path / WEIGHTS_PT), str(path / WEIGHTS_PT)
    if len(candidates) != 1:
        raise SAEFormatError(
            f"{path}: BatchTopK family layout expects sae.pt or exactly one weights .safetensors "
            f"file, found {[p.name for p in candidates]}"
        )
    return read_safetensors(candidates[0])[0], str(candidates[0])


def read(path: Path, **_) -> SAEFile:
    cfg_path = _cfg_path(path)
    where = str(cfg_path)
    cfg = read_json(cfg_path)
    d_in = int_field(cfg, "act_size", where)
    d_sae = int_field(cfg, "dict_size", where)
    early = [k for k in EARLY_KEYS if k in cfg]
    sae_type = cfg.get("sae_type", "topk")
    if sae_type not in TYPES:
        raise UnsupportedError(
            f"{where}: sae_type {sae_type!r} is not supported, expected one of {sorted(TYPES)}"
        )
    if cfg.get("activation", "relu") != "relu":
        raise UnsupportedError(
            f"{where}: activation {cfg.get('activation')!r} is not supported, expected 'relu'"
        )
    input_norm = "none"
    if cfg.get("input_unit_norm", False):
        if early:
            raise UnsupportedError(
                f"{where}: input_unit_norm=true in an early BatchTopK config (it has {early}): that "
                "code adds the normalised input back to the reconstruction, which stitchkit does not model"
            )
        input_norm = "layer_norm"
    activation = TYPES[sae_type]
    k = int_field(cfg, "top_k", where) if activation in ("topk", "batchtopk") else None
    notes = []
    if input_norm != "none":
        notes.append("input_unit_norm: each token layer-normalised, stated as SAE.input_norm='layer_norm'")

    raw, wh = _weights(path)
    W_enc = tensor(raw, "W_enc", wh)
    t = {"W_enc": W_enc, "b_dec": tensor(raw, "b_dec", wh)}
    if cfg.get("tied_weights", False):
        t["W_dec"] = W_enc.t().contiguous()
        if "W_dec" in raw:
            notes.append(
                "tied_weights: decoder read as W_enc^T, the file's W_dec (unused by the writer) ignored"
            )
    else:
        t["W_dec"] = tensor(raw, "W_dec", wh)
    if "use_encoder_bias" in cfg:
        use_bias = cfg["use_encoder_bias"] is not False
    else:  # b9aab1c: topk and batchtopk never add b_enc
        use_bias = activation not in ("topk", "batchtopk")
    if use_bias:
        t["b_enc"] = tensor(raw, "b_enc", wh)
    else:
        t["b_enc"] = torch.zeros(d_sae, dtype=W_enc.dtype)
        if "b_enc" in raw and bool(tensor(raw, "b_enc", wh).any()):
            notes.append(f"b_enc of the file not applied ({sae_type} adds none in the writer's forward)")
    if activation == "jumprelu":
        if "threshold" in raw:
            t["threshold"] = tensor(raw, "threshold", wh)
        else:
            t["threshold"] = (
                tensor(raw, "log_threshold", wh, aliases=("jumprelu.log_threshold",)).double().exp()
            )
    elif activation == "batchtopk":
        key = next((key for key in ("threshold", "topk_threshold") if key in raw), None)
        if key is None:
            raise UnsupportedError(
                f"{wh}: sae_type 'batchtopk' without a 'threshold' tensor: the writer keeps the top "
                "top_k * batch of each batch, so a token's features depend on its batch; add the "
                "inference threshold (a 'threshold' tensor) to read it"
            )
        t["threshold"] = tensor(raw, key, wh)
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        tensors=t,
        k=k,
        hook_name=cfg.get("hook_point") or cfg.get("hook_name"),
        apply_b_dec_to_input=activation != "jumprelu",
        dtype=parse_dtype(cfg["dtype"], where) if cfg.get("dtype") else None,
        l1_coefficient=float(cfg.get("l1_coeff") or 0.0),
        input_norm=input_norm,
        notes=notes,
    )
