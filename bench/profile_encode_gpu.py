"""Where the fused encode's time goes on a GPU: torch.profiler's per-kernel device time for the
bf16 and fp32 encode and forward paths (bench/README.md, "SAE kernels"), and the fp32 screen
against tf32x3 at the widths between the two bench shapes. Writes one JSON file.

    python bench/profile_encode_gpu.py --out bench/results/gpu_encode_profile_<gpu>.json

Rows ("profile"): for each case, the kernels and copies it launched, with their device time per
call (ms, mean over the profiled calls) and the whole call's median (do_bench). "crossover":
kernels_gpu.encode_fp32_variants (the screen against tf32x3) at n = 32,768, d_in = 768, L0 ~50.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels_gpu  # noqa: E402
from kernels_gpu import encode_fp32_variants, make  # noqa: E402

from stitchkit.ops.encode.triton import (  # noqa: E402
    _encode_slots,
    default_precision,
    encode_sparse_triton,
    sae_forward_triton,
)

CALLS = 5


def device_ms(event) -> float:
    us = getattr(event, "device_time_total", None)
    if us is None:
        us = event.cuda_time_total
    return us / 1e3 / CALLS


def sync() -> None:
    if kernels_gpu.DEVICE == "cuda":
        torch.cuda.synchronize()


def profiled(fn) -> dict:
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        sync()
    rows = [
        {"name": e.key[:90], "ms_per_call": round(device_ms(e), 4), "launches_per_call": e.count / CALLS}
        for e in prof.key_averages()
        if device_ms(e) > 0.005 and getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
    ]
    rows.sort(key=lambda r: -r["ms_per_call"])
    return {"median_ms": do_bench(fn, warmup=20, rep=200, return_mode="median"), "kernels": rows[:12]}


def profile_shape(d_sae: int) -> dict:
    x, W_enc, b_enc, W_dec, b_dec = make(d_sae)
    xb, Web, beb, Wdb, bdb = (t.bfloat16() for t in (x, W_enc, b_enc, W_dec, b_dec))
    WTb = Web.t().contiguous()
    slots = (xb, WTb, beb, None, None, None, default_precision(xb), None, True)
    cases = {
        "bf16_forward": lambda: sae_forward_triton(xb, Web, beb, Wdb, bdb),
        "bf16_encode": lambda: encode_sparse_triton(xb, Web, beb),
        "bf16_encode_no_codes": lambda: encode_sparse_triton(xb, Web, beb, emit_codes=False),
        "bf16_encode_peel": lambda: encode_sparse_triton(xb, Web, beb, compact="peel"),
        "fp32_screen_encode_peel": lambda: encode_sparse_triton(
            x, W_enc, b_enc, precision="screen", compact="peel"
        ),
        # The kernel alone (no transpose copy, no sort), with and without the L1/L0 partials.
        "bf16_kernel_codes_stats": lambda: _encode_slots(*slots),
        "bf16_kernel_codes_no_stats": lambda: _encode_slots(*slots, stats=False),
        "fp32_screen_encode": lambda: encode_sparse_triton(x, W_enc, b_enc, precision="screen"),
        "fp32_forward": lambda: sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec),
    }
    out = {}
    for name, fn in cases.items():
        out[f"{name}_{d_sae}"] = r = profiled(fn)
        print(name, d_sae, json.dumps(r), flush=True)
    return out


def crossover(d_sae: int) -> dict:
    x, W_enc, b_enc, _, b_dec = make(d_sae)
    return {"d_sae": d_sae, **encode_fp32_variants(x - b_dec, W_enc, b_enc)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", type=int, nargs="*", default=[24_576, 98_304], help="d_sae to profile")
    ap.add_argument("--crossover", type=int, nargs="*", default=[24_576, 49_152, 65_536, 98_304])
    args = ap.parse_args()
    out: dict = {
        "device": kernels_gpu.device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "profile": {},
        "crossover": [],
    }

    def save():  # after every shape, so a run cut off by its time limit keeps what it finished
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    for d_sae in args.profile:
        out["profile"].update(profile_shape(d_sae))
        if kernels_gpu.DEVICE == "cuda":
            torch.cuda.empty_cache()
        save()
    for d_sae in args.crossover:
        row = crossover(d_sae)
        out["crossover"].append(row)
        print(json.dumps(row), flush=True)
        save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
