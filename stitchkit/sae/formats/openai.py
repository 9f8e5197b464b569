"""OpenAI's sparse_autoencoder: a state-dict `.pt` with pre_bias [n_inputs], latent_bias
[n_latents], encoder.weight [n_latents, n_inputs], decoder.weight [n_inputs, n_latents], and
"activation" ("ReLU" or "TopK", with activation_state_dict.k). As its model.py documents:
latents = activation(encoder(x - pre_bias) + latent_bias), recons = decoder(latents) + pre_bias.
Its TopK autoencoders layer-normalise each input first (and map the reconstruction back): stated
as SAE.input_norm = "layer_norm". Read with torch.load(weights_only=True).

Each entry: what model.py (Autoencoder.from_state_dict, forward) does with it -> what stitchkit does.
- activation (default ReLU): ReLU or TopK; TopK also sets normalize (the per-token layer norm)
  -> relu, or topk with input_norm "layer_norm"; anything else refused.
- activation_state_dict.k, .postact_fn (default ReLU): TopK's k and the function on its values ->
  k; postact_fn other than ReLU refused.
- pre_bias, latent_bias, encoder.weight, decoder.weight: the forward above -> the same; no
  decoder.weight (tied) refused.
- stats_last_nonzero: a training statistic (dead latents) -> not read.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SAEFormatError, UnsupportedError
from ._common import SAEFile, dims, read_torch, scalar_k, tensor

ORACLE = "openai/sparse_autoencoder model.py: Autoencoder.from_state_dict + forward, re-written in float64"
NOT_READ = ("stats_last_nonzero",)

NAME = "openai"
DESCRIBES = (
    "OpenAI sparse_autoencoder: state-dict .pt (pre_bias, latent_bias, encoder/decoder.weight; ReLU or TopK)"
)


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix in (".pt", ".pth") and path.name != "ae.pt"


def read(path: Path, **_) -> SAEFile:
    wh = str(path)
    sd = read_torch(path)
    if "pre_bias" not in sd:
        raise SAEFormatError(
            f"{wh}: tensor 'pre_bias' is missing: not an OpenAI sparse_autoencoder state dict "
            f"(found {sorted(k for k in sd if isinstance(k, str))[:8]}; "
            "a dictionary_learning file is named ae.pt)"
        )
    act = sd.get("activation", "ReLU")
    if act not in ("ReLU", "TopK"):
        raise UnsupportedError(f"{wh}: activation {act!r} is not supported, expected 'ReLU' or 'TopK'")
    k = None
    if act == "TopK":
        asd = sd.get("activation_state_dict") or {}
        if asd.get("postact_fn", "ReLU") != "ReLU":
            raise UnsupportedError(
                f"{wh}: TopK postact_fn {asd.get('postact_fn')!r} is not supported, expected 'ReLU'"
            )
        k = scalar_k(asd.get("k"), wh, "activation_state_dict.k")
    if "decoder.weight" not in sd and "encoder.weight" in sd:
        raise UnsupportedError(f"{wh}: no decoder.weight (a tied autoencoder); expected an untied one")
    t = {
        "W_enc": tensor(sd, "encoder.weight", wh).t(),
        "b_enc": tensor(sd, "latent_bias", wh),
        "W_dec": tensor(sd, "decoder.weight", wh).t(),
        "b_dec": tensor(sd, "pre_bias", wh),
    }
    d_in, d_sae = dims(t["W_enc"], 2, "encoder.weight", wh)
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation="topk" if act == "TopK" else "relu",
        tensors=t,
        k=k,
        dtype=t["W_enc"].dtype,
        input_norm="layer_norm" if act == "TopK" else "none",
        name=path.stem,
        notes=["input layer-normalised per token: stated as SAE.input_norm='layer_norm'"]
        if act == "TopK"
        else [],
    )
