"""llamascopium 2.x (OpenMOSS, the renamed lm_saes, on PyPI): `config.json` (the SAEConfig dump,
`"sae_type": "sae"`) + `sae_weights.safetensors` (or `sae_weights.pt`, {"sae": state dict}) with
W_E [d_model, d_sae], b_E, W_D [d_sae, d_model], b_D, activation_function.log_jumprelu_threshold
and one scalar `dataset_average_activation_norm.<hook>` per hook point. Read as llamascopium
2.0.0b34 reads it: `SparseDictionary.from_pretrained(path)` (no fold_activation_scale), its
`normalize_activations` on the input, `encode`, `decode`, and the output divided by the output's
scale factor (`denormalize_activations`).

llamascopium's forward, on the raw activation x:
  c_in, c_out = sqrt(d_model) / dataset norm of hook_point_in, hook_point_out (dataset-wise),
                sqrt(d_model) / |x| per token (token-wise), 1 (inference)
  h = (c_in x) W_E + b_E                       (no b_D at the input: the library has none)
  f = act(h * n) / n   where n_j = |W_D[j]| (sparsity_include_decoder_norm, default true)
  x_hat = (f W_D + b_D) / c_out
stitchkit's form, with f unchanged (the features are the library's own values):
  W_enc = c_in W_E, b_enc = b_E, W_dec = W_D / c_out, b_dec = b_D / c_out (dataset-wise; token-wise
  keeps the weights and states input_norm "unit_norm"), and since act(h n) / n is
  relu(h) for relu and h * 1[h > exp(log_threshold) / n] for jumprelu, the jumprelu threshold of
  feature j is exp(log_threshold_j) / n_j.

Each field of config.json: what llamascopium 2.0.0b34 does with it -> what stitchkit does.
- sae_type: "sae" (SparseAutoEncoder); crosscoder, clt, lorsa, molt are other models -> "sae"
  read, anything else refused.
- d_model, expansion_factor: d_sae = int(d_model * expansion_factor) -> the same.
- act_fn (default relu): relu; jumprelu (per-feature log threshold, strict >); topk (relu, then
  the top_k largest of h * n); batchtopk (the top k * batch of the whole batch) -> relu and
  jumprelu as above; topk where every decoder norm is 1 or sparsity_include_decoder_norm is
  false; topk ranked by h * n with other decoder norms is refused (stitchkit's topk ranks f
  itself); batchtopk refused (a token's features depend on its batch).
- top_k (default 50): k -> k.
- sparsity_include_decoder_norm (default true): gating on h * n, f divided back by n -> the
  jumprelu threshold divided by n; a zero or non-finite decoder norm is refused.
- norm_activation (default dataset-wise): dataset-wise scales the input by c_in and divides the
  output by c_out; token-wise scales each token to norm sqrt(d_model) (in and out alike, as the
  label is the input); inference reads x raw; batch-wise depends on the batch -> dataset-wise
  folded as above; token-wise as input_norm "unit_norm"; inference raw; batch-wise refused.
- dataset_average_activation_norm.<hook> (tensors): the dataset norms of dataset-wise -> the
  same; refused when missing, not finite or not positive. Other modes never read them (the
  library saves uninitialised values there).
- use_decoder_bias (default true): b_D added at the output -> b_dec; without it b_dec is 0, and a
  file that still holds b_D is refused (the library loads strictly).
- use_glu_encoder (default false): h times sigmoid(x W_E_glu + b_E_glu) -> refused.
- hook_point_in, hook_point_out: differing means a transcoder -> the hook name; a transcoder is
  refused.
- use_triton_kernel, sparsity_threshold_for_triton_spmm_kernel: another route to the same
  product -> not read.
- jumprelu_threshold_window: the threshold's training gradient -> not read.
- dtype, device: excluded from config.json by the library (float32 unless the caller asks) -> the
  weights file's dtype.

A note on files the library's training runner writes with fold_activation_scale: it saves
config.json before it folds the dataset norm into the weights, so such a folder says
"dataset-wise" over weights that no longer need it, and llamascopium's own loader scales them
twice. stitchkit reads the folder as that loader does; it cannot tell the two apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import (
    Defaults,
    SAEFile,
    int_field,
    read_json,
    read_safetensors,
    read_torch,
    shaped_tensor,
    tensor,
)

NAME = "llamascopium"
DESCRIBES = "llamascopium 2.x (lm_saes): config.json + sae_weights.safetensors, read as llamascopium reads it"
CFG = "config.json"
WEIGHTS = "sae_weights.safetensors"
WEIGHTS_PT = "sae_weights.pt"
FILES = (CFG, WEIGHTS)
ORACLE = "llamascopium 2.0.0b34: save_pretrained, then from_pretrained + normalize_activations + forward"

# SparseDictionaryConfig's and SAEConfig's defaults at 2.0.0b34, for fields a file leaves out.
DEFAULTS = Defaults(
    dict(
        sae_type=None,
        act_fn="relu",
        top_k=50,
        sparsity_include_decoder_norm=True,
        norm_activation="dataset-wise",
        use_decoder_bias=True,
        use_glu_encoder=False,
    )
)
# Saved by the library, not needed for the features: the kernel route, the threshold's training
# window, top_k where act_fn is not topk, the dataset norms where norm_activation is not
# dataset-wise.
NOT_READ = (
    "use_triton_kernel",
    "sparsity_threshold_for_triton_spmm_kernel",
    "jumprelu_threshold_window",
    "top_k",
    "dataset_average_activation_norm",
)
THRESHOLD = "activation_function.log_jumprelu_threshold"
DATASET_NORM = "dataset_average_activation_norm."


def _config(path: Path) -> dict | None:
    try:
        cfg = read_json(path / CFG)
    except SAEFormatError:
        return None
    return cfg if "sae_type" in cfg and "d_model" in cfg else None


def detect(path: Path) -> bool:
    if not (path.is_dir() and (path / CFG).is_file()):
        return False
    if not ((path / WEIGHTS).is_file() or (path / WEIGHTS_PT).is_file()):
        return False
    return _config(path) is not None


def _weights(path: Path) -> tuple[dict, str]:
    if (path / WEIGHTS).is_file():
        return read_safetensors(path / WEIGHTS)[0], str(path / WEIGHTS)
    state = read_torch(path / WEIGHTS_PT)
    if not isinstance(state.get("sae"), dict):
        raise SAEFormatError(f"{path / WEIGHTS_PT}: expected a dict with the state dict under 'sae'")
    return state["sae"], str(path / WEIGHTS_PT)


def _dataset_norm(raw: dict, hook: str, wh: str) -> float:
    key = DATASET_NORM + hook
    if key not in raw:
        raise SAEFormatError(
            f"{wh}: tensor {key!r} is missing (norm_activation is 'dataset-wise'); found "
            f"{sorted(k for k in raw if k.startswith(DATASET_NORM))}"
        )
    v = raw[key]
    if not isinstance(v, torch.Tensor) or v.numel() != 1 or not v.is_floating_point():
        raise SAEFormatError(f"{wh}: tensor {key!r} must be one floating-point number")
    value = float(v.double())
    if not (math.isfinite(value) and value > 0):
        raise SAEFormatError(
            f"{wh}: tensor {key!r} must be a positive number (norm_activation is 'dataset-wise'), "
            f"found {value!r}"
        )
    return value


def read(path: Path, **_) -> SAEFile:
    where = str(path / CFG)
    cfg = _config(path)
    if cfg is None:
        cfg = read_json(path / CFG)  # raises for unreadable JSON
        raise SAEFormatError(f"{where}: not a llamascopium config (expected 'sae_type' and 'd_model')")
    kind = cfg["sae_type"]
    if kind != "sae":
        raise UnsupportedError(
            f"{where}: sae_type {kind!r} is not a sparse autoencoder (crosscoders, transcoders, "
            "lorsa and molt have no SAE form here); expected 'sae'"
        )
    d_in = int_field(cfg, "d_model", where)
    factor = cfg.get("expansion_factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise SAEFormatError(f"{where}: field 'expansion_factor' must be a positive number, found {factor!r}")
    d_sae = int_field(cfg, "expansion_factor", where, value=int(d_in * factor))
    hook_in, hook_out = cfg.get("hook_point_in"), cfg.get("hook_point_out")
    for key, hook in (("hook_point_in", hook_in), ("hook_point_out", hook_out)):
        if not isinstance(hook, str) or not hook:
            raise SAEFormatError(f"{where}: field {key!r} must be a hook name, found {hook!r}")
    if hook_in != hook_out:
        raise UnsupportedError(
            f"{where}: hook_point_out {hook_out!r} differs from hook_point_in: a transcoder"
        )
    if DEFAULTS.flag(cfg, "use_glu_encoder", where):
        raise UnsupportedError(
            f"{where}: use_glu_encoder is true: a gated (GLU) encoder has no SAE form here"
        )
    act = DEFAULTS.get(cfg, "act_fn")
    if act == "batchtopk":
        raise UnsupportedError(
            f"{where}: act_fn 'batchtopk': llamascopium keeps the top k * batch of the whole batch "
            "at inference too, so a token's features depend on its batch"
        )
    if act not in ("relu", "jumprelu", "topk"):
        raise UnsupportedError(f"{where}: act_fn {act!r} is not supported, expected relu, jumprelu or topk")
    norm = DEFAULTS.get(cfg, "norm_activation")
    if norm not in ("dataset-wise", "token-wise", "inference"):
        raise UnsupportedError(
            f"{where}: norm_activation {norm!r} is not supported (batch-wise depends on the batch), "
            "expected dataset-wise, token-wise or inference"
        )
    gate_by_norm = DEFAULTS.flag(cfg, "sparsity_include_decoder_norm", where)
    use_bias = DEFAULTS.flag(cfg, "use_decoder_bias", where)

    raw, wh = _weights(path)
    sizes = f"d_model {d_in}, d_sae {d_sae} in {CFG}"

    def read_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        return shaped_tensor(raw, key, shape, wh, sizes)

    dtype = tensor(raw, "W_E", wh).dtype
    t = {
        "W_enc": read_tensor("W_E", (d_in, d_sae)),
        "b_enc": read_tensor("b_E", (d_sae,)),
        "W_dec": read_tensor("W_D", (d_sae, d_in)),
    }
    if use_bias:
        t["b_dec"] = read_tensor("b_D", (d_in,))
    elif "b_D" in raw:
        raise SAEFormatError(f"{wh}: holds 'b_D' but {CFG} says use_decoder_bias is false")
    else:
        t["b_dec"] = torch.zeros(d_in, dtype=torch.float64)
    n = t["W_dec"].norm(dim=1)  # the stored decoder's norms, which the forward gates by

    notes = []
    if norm == "dataset-wise":
        c_in = math.sqrt(d_in) / _dataset_norm(raw, hook_in, wh)
        c_out = math.sqrt(d_in) / _dataset_norm(raw, hook_out, wh)
        t["W_enc"] = t["W_enc"] * c_in
        t["W_dec"] = t["W_dec"] / c_out
        t["b_dec"] = t["b_dec"] / c_out
        notes.append(
            f"dataset-wise input scale folded (c_in {c_in:.6g} into W_enc, 1/c_out {1 / c_out:.6g} "
            "into W_dec, b_dec); features keep llamascopium's values"
        )

    k = None
    bad = ~((n > 0) & n.isfinite())
    if gate_by_norm and act in ("jumprelu", "topk") and bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise UnsupportedError(
            f"{wh}: feature {j} has a zero or non-finite decoder row (norm {float(n[j])}), which "
            "llamascopium divides by (sparsity_include_decoder_norm is true)"
        )
    if act == "jumprelu":
        theta = read_tensor(THRESHOLD, (d_sae,)).exp()
        if gate_by_norm:
            theta = theta / n
            notes.append(
                f"jumprelu thresholds divided by the decoder norms (sparsity_include_decoder_norm; "
                f"norms {float(n.min()):.4g}..{float(n.max()):.4g})"
            )
        t["threshold"] = theta
    elif THRESHOLD in raw:
        raise SAEFormatError(f"{wh}: holds {THRESHOLD!r} but {CFG} says act_fn is {act!r}")
    if act == "topk":
        k = int_field(cfg, "top_k", where, value=DEFAULTS.get(cfg, "top_k"))
        if gate_by_norm and not torch.allclose(n, torch.ones_like(n), rtol=0, atol=1e-6):
            raise UnsupportedError(
                f"{where}: act_fn topk with sparsity_include_decoder_norm true and decoder norms "
                f"{float(n.min()):.4g}..{float(n.max()):.4g}: llamascopium ranks features by h |W_D| "
                "and returns h, stitchkit's topk ranks the features it returns"
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
        apply_b_dec_to_input=False,
        dtype=dtype,
        input_norm="unit_norm" if norm == "token-wise" else "none",
        name=path.name,
        notes=notes,
    )
