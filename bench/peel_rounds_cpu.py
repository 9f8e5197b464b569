"""How many rounds the fused encode's "peel" compaction runs per tile on the GPU bench's batch
(kernels_gpu.make: d_in = 768, L0 ~50): a tile of BLOCK_M tokens x BLOCK_N features takes as many
rounds as its busiest token has active features in it (0: the tile skips the emission). The
per-element compactions ("cumsum", "atomic") do their work once per tile whatever its hits, so
this is what the peel's loop costs against them. Counted exactly on the CPU, on the first
--tokens tokens (the rest are drawn alike). Writes one JSON file.

    python bench/peel_rounds_cpu.py --out bench/results/cpu_peel_rounds.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels_gpu import make  # noqa: E402

TILES = [(64, 128), (128, 128), (128, 256)]  # the bf16 launch tile, and wider ones the peel allows


def rounds_per_tile(active: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """active [n, F] (n, F multiples of bm, bn) -> the peel's rounds per tile [n / bm, F / bn]."""
    n, F = active.shape
    hits = active.view(n // bm, bm, F // bn, bn).sum(3, dtype=torch.int32)
    return hits.amax(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[24_576, 98_304])
    ap.add_argument("--tokens", type=int, default=8_192)
    args = ap.parse_args()
    shapes = []
    for d_sae in args.d_sae:
        x, W_enc, b_enc, _, b_dec = make(d_sae, device="cpu")
        x = x[: args.tokens] - b_dec
        counts = {tile: [] for tile in TILES}
        for chunk in x.split(1024):
            active = (chunk @ W_enc + b_enc) > 0
            for bm, bn in TILES:
                counts[(bm, bn)].append(rounds_per_tile(active, bm, bn).flatten())
        tiles = []
        for (bm, bn), parts in counts.items():
            r = torch.cat(parts).float()
            tiles.append(
                dict(
                    block_m=bm,
                    block_n=bn,
                    tiles=len(r),
                    rounds_mean=float(r.mean()),
                    tiles_without_hits=float((r == 0).float().mean()),
                    rounds_p99=float(r.quantile(0.99)),
                    rounds_max=float(r.max()),
                    histogram={int(v): int((r == v).sum()) for v in r.unique()},
                )
            )
        shapes.append(dict(d_sae=d_sae, tokens=len(x), d_in=x.shape[1], tiles=tiles))
        print(json.dumps(shapes[-1]), flush=True)
    out = dict(
        device=f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__, shapes=shapes
    )
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
