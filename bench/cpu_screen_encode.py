#!/usr/bin/env python3
"""Issue 18's CPU targets for the encode: `evaluate` and a relu training step at 4,096 tokens x 384
x 6,144 (L0 ~50), with the bf16 screen (ops.encode.cpu, the default on a CPU with bf16 units)
against the same code with the screen off (the fp32 CPU route), the torch route
(STITCHKIT_KERNELS=0), and, with --before TREE, the CPU route of another checkout (the code before
the screen) timed in a subprocess of the same run. Each timing is the best of `repeat` calls.
With --acts STORE (an activation store, e.g. the demo's), also the training precision: one SAE
trained for --steps steps in fp32, with the screen (exact fp32) and with bf16 products under CPU
autocast (fp32 accumulation), each one's held-out MSE and seconds a step. JSON after every row.

    python bench/cpu_screen_encode.py --out bench/results/cpu_screen_encode.json \\
        [--before /tmp/stitchkit-before] [--acts stitchkit-out/activations/train --steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

N, D, F = 4096, 384, 6144

# Runs in this checkout or in --before's: only what both have (SAE, its loss, evaluate).
TIMINGS = r"""
import json, sys, time, torch
from stitchkit import SAE, evaluate
N, D, F, repeat = (int(a) for a in sys.argv[1:5])
g = torch.Generator().manual_seed(0)
W = torch.randn(D, F, generator=g)
W /= W.norm(dim=0, keepdim=True)
z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - 50 / F)).item()
x = torch.randn(N, D, generator=g)
model = SAE(D, F, "relu")
with torch.no_grad():
    for p, w in zip((model.W_enc, model.b_enc, model.W_dec, model.b_dec),
                    (W, torch.full((F,), -z), W.t().contiguous(), torch.zeros(D))):
        p.copy_(w)

def best(fn):
    fn()
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter(); fn(); t = min(t, time.perf_counter() - t0)
    return t

trained = SAE(D, F, "relu", l1_coefficient=1e-3)
trained.load_state_dict(model.state_dict())
trained.train()

def step():  # SAE.loss as train_sae calls it, then an optimiser-like in-place update
    trained.loss(x).total.backward()
    with torch.no_grad():
        for p in trained.parameters():
            p.sub_(1e-9 * p.grad)
            p.grad = None

def encode():
    with torch.no_grad():
        model.encode(x)

m = evaluate(model, x)
print(json.dumps(dict(evaluate_s=best(lambda: evaluate(model, x)), train_step_s=best(step),
                      encode_s=best(encode), l0=m.l0, mse=m.mse)))
"""


def run_timings(env: dict, pythonpath: Path, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", TIMINGS, str(N), str(D), str(F), str(repeat)],
        env={**os.environ, **env, "PYTHONPATH": str(pythonpath)},
        cwd=pythonpath,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def training_precision(acts: Path, steps: int, width: int) -> list[dict]:
    """One relu SAE per arithmetic, the demo's recipe, held-out MSE (exact fp32 evaluate): the CPU
    route in fp32 and with the screen, and the torch route in fp32 and with bf16 products under CPU
    autocast (fp32 accumulation, bf16 outputs), the usual mixed-precision recipe (train_sae drops
    autocast's cached bf16 weights after every step; dispatch routes autocast to torch)."""
    import torch

    from stitchkit import evaluate
    from stitchkit.data.store import ActivationStore
    from stitchkit.fit.train import train_sae
    from stitchkit.ops.dispatch import configure

    store = ActivationStore(acts)
    held = torch.cat(list(store.batches(4096, shuffle=False, n_tokens=20_480)))
    rows = []
    for name, settings, autocast in (
        ("fp32 (cpu route)", dict(cpu_bf16=False), False),
        ("screen (cpu route)", dict(cpu_bf16=True), False),
        ("fp32 (torch route)", dict(kernels=False), False),
        ("bf16 autocast (torch route)", dict(kernels=False), True),
    ):
        batches = store.stream(1024, steps, seed=1)
        t0 = time.perf_counter()
        with configure(**settings), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sae = train_sae(batches, store.d_in, width, l1_coefficient=1.5, lr=2e-3, n_steps=steps,
                            seed=7, warmup_steps=100)  # fmt: skip
        secs = time.perf_counter() - t0
        m = evaluate(sae, held[20_480 // 5 :])  # tokens the training stream may also hold: same for all
        rows.append(dict(arithmetic=name, steps=steps, width=width, held_out_mse=m.mse, l0=m.l0,
                         seconds=secs, seconds_per_step=secs / steps))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["held_out_mse"]
    for r in rows:
        r["mse_vs_fp32"] = r["held_out_mse"] / base
    return rows


def training_step_times(acts: Path, width: int, steps: int = 300) -> list[dict]:
    """ms a 1,024-token training step at `width` (the demo's widest): the screen (the default) and
    bf16 autocast on the torch route, over the last 200 of `steps` steps."""
    import torch

    from stitchkit.data.store import ActivationStore
    from stitchkit.fit.train import train_sae
    from stitchkit.ops.dispatch import configure

    store = ActivationStore(acts)
    rows = []
    for name, settings, autocast in (
        ("screen (cpu route)", {}, False),
        ("bf16 autocast (torch route)", dict(kernels=False), True),
    ):
        ts: list[float] = []
        with configure(**settings), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            train_sae(store.stream(1024, steps, seed=1), store.d_in, width, l1_coefficient=1.5, lr=1e-3,
                      n_steps=steps, seed=7, progress=lambda *_: ts.append(time.perf_counter()))  # fmt: skip
        rows.append(
            dict(arithmetic=name, width=width, batch=1024, ms_per_step=(ts[-1] - ts[-201]) / 200 * 1e3)
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    from cpu_bf16_screen import cpu_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--before", type=Path, help="a checkout of the code before the screen")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--acts", type=Path, help="an activation store for the training-precision rows")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--training-only", action="store_true", help="keep --out's timings, redo training")
    args = ap.parse_args()
    out = Path(args.out)
    if args.training_only:
        res = json.loads(out.read_text())
        res["training_precision"] = training_precision(args.acts, args.steps, args.width)
        res["training_step_ms"] = training_step_times(args.acts, 6144)
        res["training_date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out.write_text(json.dumps(res, indent=1))
        return 0
    res = {
        "benchmark": "CPU encode: evaluate and a relu training step, bf16 screen vs fp32 routes",
        **cpu_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "shape": dict(tokens=N, d_in=D, d_sae=F, l0_target=50),
        "timing": f"best of {args.repeat} calls after one warm-up, each variant in its own process",
        "rows": [],
    }
    variants = [("screen", {}, ROOT), ("cpu_fp32", {"STITCHKIT_CPU_BF16": "0"}, ROOT),
                ("torch", {"STITCHKIT_KERNELS": "0"}, ROOT)]  # fmt: skip
    if args.before:
        rev = subprocess.run(["git", "-C", args.before, "rev-parse", "HEAD"], capture_output=True, text=True)
        variants.append((f"before ({rev.stdout.strip()[:7]})", {}, args.before))
    for name, env, tree in variants:
        res["rows"].append(dict(variant=name, **run_timings(env, tree, args.repeat)))
        out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res["rows"][-1]))
    by = {r["variant"]: r for r in res["rows"]}
    for r in res["rows"]:
        for what in ("evaluate_s", "train_step_s", "encode_s"):
            r[f"{what[:-2]}_speedup_of_screen"] = r[what] / by["screen"][what]
    out.write_text(json.dumps(res, indent=1))
    if args.acts:
        res["training_precision"] = training_precision(args.acts, args.steps, args.width)
        res["training_step_ms"] = training_step_times(args.acts, 6144)
        out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
