#!/usr/bin/env python3
"""Issue 31's threads-under-load case: the demo's SAE training (train_sae, the demo's recipe at
width 1,536 on d_in 384: batch 1,024, L1 1.5, lr 1e-3) in steps/s on a quiet machine and with a
second busy process on it, in one run; and the same for the exact max cosine (the bf16 screen or
whatever `auto` picks, 12,288 x 6,144 x 384). The busy process is another Python spinning one
core. On n cores the fair share with it running is (n - 1) / n of the quiet rate (one core lost);
a ratio far under that is a collapse (threads spin-waiting for a core the other process holds).
Each variant runs in its own process (the thread policy is set at start): OpenMP spinning while
it waits (OMP_WAIT_POLICY=ACTIVE) against stitchkit's default (PASSIVE, set when stitchkit is
imported before torch). Writes its JSON after every row.

    python bench/cpu_under_load.py --out bench/results/cpu_under_load_amd_epyc.json
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
sys.path.insert(0, str(ROOT / "bench"))

WORK = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import stitchkit as sk  # before torch, as the CLI imports it: its thread policy applies
import torch
from stitchkit.ops.dispatch import similarity_backend
kind, seconds = sys.argv[2], float(sys.argv[3])
g = torch.Generator().manual_seed(0)
if kind == "train":
    x = torch.randn(65_536, 384, generator=g)
    def batches(n):  # train_sae takes one step per batch: n of them
        for i in range(n):
            yield x[(i * 1024) % 64_512 : (i * 1024) % 64_512 + 1024]
    def steps_per_s(n):
        t0 = time.perf_counter()
        sk.train_sae(batches(n), 384, 1536, n_steps=n, l1_coefficient=1.5, lr=1e-3, seed=0)
        return n / (time.perf_counter() - t0)
    n = max(20, int(steps_per_s(20) * seconds))  # the first call warms up (JIT) and sizes the run
    rate, unit = steps_per_s(n), "steps/s"
else:
    large = torch.nn.functional.normalize(torch.randn(12_288, 384, generator=g), dim=1)
    small = torch.nn.functional.normalize(torch.randn(6_144, 384, generator=g), dim=1)
    sk.max_cosine(large, small)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sk.max_cosine(large, small)
        n += 1
    rate, unit = n / (time.perf_counter() - t0), "calls/s"
print(json.dumps(dict(rate=rate, unit=unit, threads=torch.get_num_threads(),
                      backend=similarity_backend("auto", torch.device("cpu")))))
"""

SPIN = "while True: pass"


def run(kind: str, seconds: float, env: dict, busy: bool) -> dict:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        cmd = [sys.executable, "-c", WORK, str(ROOT), kind, str(seconds)]
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    from cpu_bf16_screen import cpu_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    res = dict(benchmark="throughput alone and beside one busy process", **cpu_info(), cores=cores,
               fair_share=(cores - 1) / cores, date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               rows=[])  # fmt: skip
    out = Path(args.out)
    # OpenMP's spinning wait (what torch alone gets) against stitchkit's default (PASSIVE)
    policies = {"OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "stitchkit's default": {}}
    for kind in ("train", "max_cosine"):
        for name, env in policies.items():
            quiet = run(kind, args.seconds, env, busy=False)
            loaded = run(kind, args.seconds, env, busy=True)
            row = dict(work=kind, policy=name, unit=quiet["unit"], backend=quiet["backend"],
                       threads=quiet["threads"], quiet=round(quiet["rate"], 3), busy=round(loaded["rate"], 3),
                       ratio=round(loaded["rate"] / quiet["rate"], 3))  # fmt: skip
            res["rows"].append(row)
            out.write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
