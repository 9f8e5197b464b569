"""marginal_delta_mse (all candidates in one pass) against the one-feature-at-a-time loop
(build each hybrid SAE with SAE.from_features and evaluate it), at 1,536 candidates.
Target (issue 4): at least 100x faster on the CPU. Both run in this process, same tokens;
the loop's results are checked against the one-pass values.

    python bench/marginal_dmse.py --out bench/results/cpu_marginal_dmse.json
    python bench/marginal_dmse.py --device cuda --out bench/results/gpu_marginal_dmse_h100.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitchkit import SAE, evaluate, insert, marginal_delta_mse  # noqa: E402


def sparse_sae(d_in: int, d_sae: int, seed: int, name: str, device: str) -> SAE:
    """Unit decoder rows, W_enc = W_dec^T and a bias giving L0 of about 2% of d_sae on N(0, 1) data."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, name=name, generator=g)
    with torch.no_grad():
        sae.b_enc.fill_(-2.0)
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
    return sae.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-in", type=int, default=384)
    ap.add_argument("--base", type=int, default=768)
    ap.add_argument("--candidates", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--loop", type=int, default=None, help="time the loop on this many candidates only")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = args.device
    base = sparse_sae(args.d_in, args.base, 1, "base", dev)
    donor = sparse_sae(args.d_in, args.candidates, 2, "donor", dev)
    x = torch.randn(args.tokens, args.d_in, generator=torch.Generator().manual_seed(3)).to(dev)
    batches = list(x.split(args.batch))

    marginal_delta_mse(base, donor, batches[:1])  # warm-up
    sync(dev)
    t0 = time.perf_counter()
    dmse = marginal_delta_mse(base, donor, batches)
    sync(dev)
    one_pass = time.perf_counter() - t0

    n_loop = args.candidates if args.loop is None else min(args.loop, args.candidates)
    mse0 = evaluate(base, batches).mse
    loop_vals = []
    sync(dev)
    t0 = time.perf_counter()
    for j in range(n_loop):
        loop_vals.append(evaluate(insert(base, donor, [j]), batches).mse - mse0)
    sync(dev)
    loop = time.perf_counter() - t0
    loop_vals = torch.tensor(loop_vals, dtype=torch.float64)
    err = (loop_vals - dmse[:n_loop]).abs().max().item()
    loop_full = loop * args.candidates / n_loop
    m = evaluate(base, batches)
    result = dict(
        benchmark="marginal_delta_mse vs one-feature-at-a-time loop",
        device=torch.cuda.get_device_name()
        if dev == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})",
        threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, python=platform.python_version()),
        shapes=dict(
            d_in=args.d_in,
            base_d_sae=args.base,
            candidates=args.candidates,
            tokens=args.tokens,
            batch=args.batch,
            base_l0=m.l0,
        ),
        one_pass_s=one_pass,
        loop_s=loop,
        loop_candidates_timed=n_loop,
        loop_s_for_all_candidates=loop_full,
        loop_extrapolated=n_loop < args.candidates,
        speedup=loop_full / one_pass,
        max_abs_diff=err,
        base_mse=mse0,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
