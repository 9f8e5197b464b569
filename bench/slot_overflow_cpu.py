"""How many tokens of the GPU bench's batch (kernels_gpu.make: n = 32,768, d_in = 768, L0 ~50)
have more active features than the fused encode's 128 default slots, at each d_sae. Those tokens
are encoded a second time; until the encode re-ran only them, any one of them re-ran the whole
batch. The CPU generator draws other numbers than CUDA's from the same distribution, so counts
agree in distribution, not token for token. Runs on the CPU (about a minute); writes one JSON file.

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


def l0_per_token(x, W_enc, b_enc, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([((x[i : i + chunk] @ W_enc + b_enc) > 0).sum(1) for i in range(0, len(x), chunk)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[24_576, 98_304])
    args = ap.parse_args()
    shapes = []
    for d_sae in args.d_sae:
        x, W_enc, b_enc, _, b_dec = make(d_sae, device="cpu")
        l0 = l0_per_token(x - b_dec, W_enc, b_enc).float()
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
            )
        )
        print(json.dumps(shapes[-1]), flush=True)
    out = dict(
        device=f"CPU ({platform.processor() or platform.machine()})", torch=torch.__version__, shapes=shapes
    )
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
