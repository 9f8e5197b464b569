"""Gemma Scope (Google DeepMind): `params.npz` with W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, threshold: JumpReLU SAEs that do not subtract b_dec at the input. The folder's name
(layer_L/width_W/average_l0_N) is the SAE's name; the hook is not in the file (hook_name=...
names it).

The code that wrote the files (DeepMind's JAX training) is not public; the release documents its
reading in the Gemma Scope tutorial's JumpReLUSAE (np.load, a strict load_state_dict, then
pre = x W_enc + b_enc, f = ReLU(pre) * 1[pre > threshold], x_hat = f W_dec + b_dec). That forward,
re-written in float64 in tests/sae/formats/, is the oracle; SAELens' gemma_2 loader, a second
reader, is compared too (scripts/check_peers.py).

Each array: what the tutorial does with it -> what stitchkit does.
- W_enc, b_enc, W_dec, b_dec, threshold: the forward above (strict >) -> the same, b_dec not
  subtracted at the input.
- scaling_factor (in some re-packs): the tutorial's strict load refuses any extra array; SAELens
  drops it when all ones and raises otherwise -> all ones ignored, anything else refused.
- any other array: refused by the tutorial's strict load -> listed in the load report as not
  read.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UnsupportedError
from ._common import SAEFile, dims, read_npz, tensor

NAME = "gemma-scope"
DESCRIBES = "Gemma Scope: params.npz (JumpReLU: W_enc, W_dec, b_enc, b_dec, threshold)"
WEIGHTS = "params.npz"
FILES = (WEIGHTS,)
ORACLE = "the Gemma Scope tutorial's JumpReLUSAE forward, re-written in float64 (and SAELens' gemma_2 loader)"


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / WEIGHTS).is_file()) or (path.is_file() and path.suffix == ".npz")


def read(path: Path, **_) -> SAEFile:
    weights = path / WEIGHTS if path.is_dir() else path
    wh = str(weights)
    raw = read_npz(weights)
    t = {key: tensor(raw, key, wh) for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    d_in, d_sae = dims(t["W_enc"], 2, "W_enc", wh)
    if "scaling_factor" in raw and not bool((tensor(raw, "scaling_factor", wh) == 1).all()):
        raise UnsupportedError(
            f"{wh}: array 'scaling_factor' is not all ones: the Gemma Scope tutorial's loader refuses "
            "it and SAELens raises; stitchkit expects unscaled features"
        )
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
