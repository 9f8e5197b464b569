"""How the active features of the GPU bench's batch (kernels_gpu.make: n = 32,768, d_in = 768,
L0 ~50) fall, at each d_sae, counted exactly on the CPU (about two minutes); writes one JSON file.

- Per token: how many tokens have more active features than the fused encode's 128 default
  slots. Those tokens are encoded a second time; until the encode re-ran only them, any one of
  them re-ran the whole batch.
- Per tile ("peel_rounds"): how many rounds the encode's "peel" compaction runs in a tile of
  BLOCK_M tokens x BLOCK_N features: as many as its busiest token has active features in it
  (0: the tile skips the emission). The per-element compactions do their work once per tile
  whatever its hits, so this is what the peel's loop costs against them.

The CPU generator draws other numbers than CUDA's from the same distribution, so counts agree in
distribution, not token for token.

    python bench/slot_overflow_cpu.py --out bench/results/cpu_slot_overflow.json
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
    return active.view(n // bm, bm, F // bn, bn).sum(3, dtype=torch.int32).amax(1)


def peel_summary(r: torch.Tensor, bm: int, bn: int) -> dict:
    r = r.float()
    return dict(
        block_m=bm,
        block_n=bn,
        tiles=len(r),
        rounds_mean=float(r.mean()),
        tiles_without_hits=float((r == 0).float().mean()),
        rounds_p99=float(r.quantile(0.99)),
        rounds_max=float(r.max()),
        histogram={int(v): int((r == v).sum()) for v in r.unique()},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[24_576, 98_304])
    ap.add_argument("--peel-tokens", type=int, default=8_192, help="tokens whose tiles are counted")
    args = ap.parse_args()
    shapes = []
    for d_sae in args.d_sae:
        x, W_enc, b_enc, _, b_dec = make(d_sae, device="cpu")
        l0, rounds = [], {tile: [] for tile in TILES}
        for start in range(0, len(x), 2048):
            active = ((x[start : start + 2048] - b_dec) @ W_enc + b_enc) > 0
            l0.append(active.sum(1))
            if start < args.peel_tokens:
                for bm, bn in TILES:
                    rounds[(bm, bn)].append(rounds_per_tile(active, bm, bn).flatten())
        l0 = torch.cat(l0).float()
        shapes.append(
            dict(
                n=len(x),
                d_in=x.shape[1],
                d_sae=d_sae,
                l0_mean=float(l0.mean()),
                l0_p99=float(l0.quantile(0.99)),
                l0_max=float(l0.max()),
                tokens_over_128=int((l0 > 128).sum()),
                tokens_over_256=int((l0 > 256).sum()),
                peel_rounds_tokens=min(len(x), -(-args.peel_tokens // 2048) * 2048),
                peel_rounds=[peel_summary(torch.cat(r), bm, bn) for (bm, bn), r in rounds.items()],
            )
        )
        print(json.dumps(shapes[-1]), flush=True)
    out = dict(
        device=f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__, shapes=shapes
    )
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
