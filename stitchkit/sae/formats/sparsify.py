"""EleutherAI sparsify: a checkpoint directory with one folder per hookpoint, each `cfg.json`
(activation, k, num_latents or expansion_factor, d_in, transcode, skip_connection) +
`sae.safetensors` (encoder.weight [num_latents, d_in], encoder.bias, W_dec [num_latents, d_in],
b_dec). Point load_sae at the hookpoint's folder, or at the checkpoint with hookpoint=NAME.

sparsify encodes TopK(ReLU(encoder(x - b_dec))): the same codes as stitchkit's topk (the k
largest pre-activations, then ReLU). Refused: groupmax activations, transcoders, skip connections.
The writer is eai-sparsify 1.3.3's SparseCoder.save_to_disk; its load_from_disk + encode/decode
are the oracle (scripts/check_peers.py).

Each cfg.json field: what sparsify 1.3.3 does with it -> what stitchkit does.
- activation (topk, groupmax): the activation -> topk read, groupmax refused.
- num_latents, expansion_factor: num_latents, else d_in * expansion_factor -> the same.
- k (default 32): the top k (the value after any k decay) -> k.
- d_in: the input width -> read.
- transcode: no b_dec at the input, another module's output as target -> refused.
- skip_connection: adds x W_skip^T to the output -> refused.
- normalize_decoder, multi_topk: training only (unit decoder at step 0, an extra loss) -> not read.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SAEFormatError, UnsupportedError
from ._common import SAEFile, int_field, read_json, read_safetensors, scalar_k, tensor

NAME = "sparsify"
DESCRIBES = "EleutherAI sparsify: <hookpoint>/cfg.json + sae.safetensors (TopK, encoder as nn.Linear)"
CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
FILES = (CFG, WEIGHTS)
ORACLE = "eai-sparsify 1.3.3: SparseCoder.save_to_disk, then load_from_disk + encode/decode"
NOT_READ = ("normalize_decoder", "multi_topk", "expansion_factor", "num_latents")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def hookpoints(path: Path) -> list[str]:
    """The hookpoint folders of a sparsify checkpoint directory."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and detect(p))


def read(path: Path, **_) -> SAEFile:
    where = str(path / CFG)
    cfg = read_json(path / CFG)
    if cfg.get("transcode"):
        raise UnsupportedError(f"{where}: transcode=true: a transcoder reconstructs another module's output")
    if cfg.get("skip_connection"):
        raise UnsupportedError(f"{where}: skip_connection=true adds a linear skip path stitchkit's SAE lacks")
    act = cfg.get("activation", "topk")
    if act != "topk":
        raise UnsupportedError(f"{where}: activation {act!r} is not supported, expected 'topk'")
    d_in = int_field(cfg, "d_in", where)
    n = cfg.get("num_latents") or 0
    d_sae = int_field(cfg, "num_latents", where) if n else d_in * int_field(cfg, "expansion_factor", where)
    k = scalar_k(cfg.get("k", 32), where)
    wh = str(path / WEIGHTS)
    raw, _ = read_safetensors(path / WEIGHTS)
    enc = tensor(raw, "encoder.weight", wh)
    if "W_dec" not in raw:
        raise SAEFormatError(f"{wh}: tensor 'W_dec' is missing (saved without a decoder?)")
    t = {
        "W_enc": enc.t(),
        "b_enc": tensor(raw, "encoder.bias", wh),
        "W_dec": tensor(raw, "W_dec", wh),
        "b_dec": tensor(raw, "b_dec", wh),
    }
    return SAEFile(
        format=NAME,
        where=wh,
        d_in=d_in,
        d_sae=d_sae,
        activation="topk",
        tensors=t,
        k=k,
        hook_name=path.name,
        name=path.name,
    )
