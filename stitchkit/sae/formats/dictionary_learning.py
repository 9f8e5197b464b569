"""saprmarks/dictionary_learning: `ae.pt` (a state dict) beside the `config.json` its trainer
writes ({"trainer": {"dict_class", "activation_dim", "dict_size", "k", ...}}). The dictionary
class comes from config.json's dict_class, else from the state dict's keys.

    AutoEncoder             relu: ReLU(encoder(x - bias)), decoder(f) + bias; decoder rows not of
                            unit norm are normalised with the norms folded into the encoder, as
                            its from_pretrained does (same x_hat, features scaled)
    AutoEncoderTopK         topk with k (its encode's default ignores the threshold buffer)
    BatchTopKSAE            batchtopk with its threshold: ReLU(pre) * (ReLU(pre) > threshold),
    MatryoshkaBatchTopKSAE  which its encode applies by default (SAELens once loaded these as
                            standard SAEs and dropped it)
    JumpReluAutoEncoder     jumprelu, b_dec not subtracted at the input (apply_b_dec_to_input false)
    GatedAutoEncoder        the gated encoder as the JumpReLU of its magnitude path
Read with torch.load(weights_only=True): the file cannot run code. The writer is
dictionary-learning 0.1.0's trainSAE (config.json is written before training, ae.pt after it, with
any activation scale already folded into the biases and thresholds); its own loader,
utils.load_dictionary -> <dict_class>.from_pretrained, and encode/decode are the oracle
(scripts/check_peers.py writes all six classes and compares).

Each field: what dictionary_learning does with it -> what stitchkit does.
- trainer.dict_class: the class -> the same (else guessed from the state dict's keys).
- trainer.k, the `k` buffer: k of topk and batchtopk (from_pretrained checks they agree) -> the
  buffer, else the config.
- trainer.activation_dim, trainer.dict_size: sizes -> taken from the tensors.
- trainer.submodule_name: which module -> the hook name.
- buffer.io: "in" or "out" reads a side of the submodule; "in_and_out" trains a transcoder (the
  reconstruction predicts the output) -> in and out read, in_and_out refused.
- threshold (AutoEncoderTopK): used only with encode(use_threshold=True), not the default -> not
  read; (BatchTopKSAE, Matryoshka, JumpRelu) the inference threshold -> read.
- group_sizes (Matryoshka): all groups active once loaded -> not read.
- lr, steps, warmup_steps, decay_start, l1_penalty, sparsity_penalty, auxk_alpha, threshold_beta,
  threshold_start_step, top_k_aux, bandwidth, target_l0, seed, device, wandb_name, trainer_class,
  lm_name, layer, buffer's sizes: training or labels -> not read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import SAEFormatError, UnsupportedError
from ._common import (
    SAEFile,
    dims,
    fold_decoder_norm,
    gated_as_jumprelu,
    read_json,
    read_torch,
    scalar_k,
    tensor,
)

NAME = "dictionary_learning"
DESCRIBES = (
    "saprmarks/dictionary_learning: ae.pt + config.json "
    "(standard, TopK, BatchTopK, Matryoshka, JumpReLU, Gated)"
)
WEIGHTS = "ae.pt"
CFG = "config.json"
FILES = (WEIGHTS, CFG)
ORACLE = "dictionary-learning 0.1.0: its trainer's files, read by utils.load_dictionary + encode/decode"
NOT_READ = (
    "activation_dim", "dict_size", "lr", "steps", "warmup_steps", "decay_start", "l1_penalty",
    "sparsity_penalty", "sparsity_warmup_steps", "auxk_alpha", "threshold_beta",
    "threshold_start_step", "top_k_aux", "resample_steps", "bandwidth", "target_l0", "p_start",
    "p_end", "anneal_start", "anneal_end", "sparsity_function", "sparsity_queue_length", "n_sparsity_updates",
    "seed", "device", "wandb_name", "trainer_class", "lm_name", "layer", "group_fractions",
    "group_weights", "group_sizes", "threshold", "k", "buffer", "io", "n_ctxs", "ctx_len",
    "refresh_batch_size", "out_batch_size", "d_submodule", "dict_class_kwargs",
)  # fmt: skip

CLASSES = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
    "GatedAutoEncoder",
)


def _weights(path: Path) -> Path:
    return path / WEIGHTS if path.is_dir() else path


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / WEIGHTS).is_file()) or (path.is_file() and path.name == WEIGHTS)


def _class_from_keys(sd: dict) -> str | None:
    keys = set(sd)
    if {"gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys and "k" not in keys:
        return "JumpReluAutoEncoder"
    if {"encoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    return None  # AutoEncoderTopK and BatchTopKSAE share their keys: config.json tells them apart


def read(path: Path, **_) -> SAEFile:
    weights = _weights(path)
    wh = str(weights)
    cfg_path = weights.parent / CFG
    trainer = {}
    if cfg_path.is_file():
        cfg = read_json(cfg_path)
        trainer = cfg.get("trainer") or {}
        buffer = cfg.get("buffer") if isinstance(cfg.get("buffer"), dict) else {}
        if buffer.get("io") == "in_and_out":
            raise UnsupportedError(
                f"{cfg_path}: buffer.io is 'in_and_out': a transcoder (its reconstruction predicts "
                "the submodule's output, not its input)"
            )
    sd = read_torch(weights)
    cls = trainer.get("dict_class") or _class_from_keys(sd)
    if cls is None:
        raise SAEFormatError(
            f"{wh}: cannot tell the dictionary class: {CFG} beside it (trainer.dict_class) is "
            f"missing, and the keys {sorted(sd)} fit AutoEncoderTopK and BatchTopKSAE alike"
        )
    if cls not in CLASSES:
        raise UnsupportedError(f"{cfg_path}: dict_class {cls!r} is not supported, expected one of {CLASSES}")

    apply_b_dec = True
    k = None
    notes = [f"dictionary_learning {cls}"]
    if cls == "AutoEncoder":
        t = {
            "W_enc": tensor(sd, "encoder.weight", wh).t(),
            "b_enc": tensor(sd, "encoder.bias", wh),
            "W_dec": tensor(sd, "decoder.weight", wh).t(),
            "b_dec": tensor(sd, "bias", wh),
        }
        activation = "relu"
        norms = t["W_dec"].norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms)):  # as AutoEncoder.from_pretrained does
            fold_decoder_norm(t)
            notes.append("decoder rows normalised to unit norm, their norms folded into the encoder")
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        t = {
            "W_enc": tensor(sd, "encoder.weight", wh).t(),
            "b_enc": tensor(sd, "encoder.bias", wh),
            "W_dec": tensor(sd, "decoder.weight", wh).t(),
            "b_dec": tensor(sd, "b_dec", wh),
        }
        k = scalar_k(sd.get("k", trainer.get("k")), wh)
        activation = "topk" if cls == "AutoEncoderTopK" else "batchtopk"
        if activation == "batchtopk":
            t["threshold"] = tensor(sd, "threshold", wh)
    elif cls == "MatryoshkaBatchTopKSAE":
        t = {key: tensor(sd, key, wh) for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        k = scalar_k(sd.get("k", trainer.get("k")), wh)
        activation = "batchtopk"
    elif cls == "JumpReluAutoEncoder":
        t = {key: tensor(sd, key, wh) for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        activation = "jumprelu"
        apply_b_dec = False
    else:  # GatedAutoEncoder
        enc = tensor(sd, "encoder.weight", wh)
        d_sae = dims(enc, 2, "encoder.weight", wh)[0]
        parts = {key: tensor(sd, key, wh) for key in ("gate_bias", "mag_bias", "r_mag")}
        for key, v in parts.items():
            if tuple(v.shape) != (d_sae,):
                raise SAEFormatError(f"{wh}: tensor {key!r} has shape {tuple(v.shape)}, expected ({d_sae},)")
        t = gated_as_jumprelu(enc.t(), parts["gate_bias"], parts["mag_bias"], parts["r_mag"])
        t["W_dec"] = tensor(sd, "decoder.weight", wh).t()
        t["b_dec"] = tensor(sd, "decoder_bias", wh)
        activation = "jumprelu"
        notes.append("gated encoder read as the JumpReLU of its magnitude path")

    d_in, d_sae = dims(t["W_enc"], 2, "W_enc", wh)
    dtype = next(v.dtype for v in sd.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation=activation,
        tensors=t,
        k=k,
        hook_name=trainer.get("submodule_name"),
        apply_b_dec_to_input=apply_b_dec,
        dtype=dtype,
        notes=notes,
    )
