"""Gemma Scope (Google DeepMind): `params.npz` with W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, threshold: JumpReLU SAEs that do not subtract b_dec at the input. The folder's name
(layer_L/width_W/average_l0_N) is the SAE's name; the hook is not in the file (hook_name=...
names it). SAELens' gemma_2 loader is the oracle (scripts/check_peers.py)."""

from __future__ import annotations

from pathlib import Path

from ._common import SAEFile, dims, read_npz, tensor

NAME = "gemma-scope"
DESCRIBES = "Gemma Scope: params.npz (JumpReLU: W_enc, W_dec, b_enc, b_dec, threshold)"
WEIGHTS = "params.npz"
FILES = (WEIGHTS,)


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / WEIGHTS).is_file()) or (path.is_file() and path.suffix == ".npz")


def read(path: Path, **_) -> SAEFile:
    weights = path / WEIGHTS if path.is_dir() else path
    wh = str(weights)
    raw = read_npz(weights)
    t = {key: tensor(raw, key, wh) for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    d_in, d_sae = dims(t["W_enc"], 2, "W_enc", wh)
    folder = weights.parent
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation="jumprelu",
        tensors=t,
        apply_b_dec_to_input=False,
        name="/".join(folder.parts[-3:]) if len(folder.parts) >= 3 else folder.name,
    )
