#!/usr/bin/env python3
"""Issue 18's demo target: what the demo's SAE training costs with this checkout against another
(--before TREE, e.g. the code before the CPU work), in one run on one machine. Each tree trains
the previous demo's family (widths 384..6,144; 1,000 steps up to 1,536 wide, 1,414 and 2,000 for
the two widest; batch 1,024, L1 1.5, lr 2e-3) with `python -m stitchkit train` on the same
activation store (the demo's, stitchkit-out/activations/train), each width in its own process.
Writes the seconds per width and in all, and the steps the current demo's recipe trains, to --out.

    python bench/demo_training_budget.py --acts stitchkit-out/activations/train \\
        --before /tmp/stitchkit-before --out bench/results/cpu_demo_training_budget.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

OLD_RECIPE = ((384, 1000), (768, 1000), (1536, 1000), (3072, 1414), (6144, 2000))
CURRENT_STEPS = {384: 4000, 768: 4000, 1536: 4000, 3072: 5657, 6144: 8000, "seed twin 1536": 4000}


def train_seconds(tree: Path, acts: Path, width: int, steps: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "stitchkit", "train", "--acts", str(acts), "--widths", str(width),
           "--steps", str(steps), "--batch-size", "1024", "--l1", "1.5", "--lr", "2e-3",
           "--out", str(out), "--eval-tokens", "20000"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True
    )
    return time.perf_counter() - t0


def main() -> int:
    from cpu_bf16_screen import cpu_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acts", type=Path, required=True)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = {
        "benchmark": "the previous demo's SAE training, this checkout vs --before, same run",
        **cpu_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "recipe": [dict(width=w, steps=s) for w, s in OLD_RECIPE],
        "trees": {},
    }
    for label, tree in (("before", args.before.resolve()), ("this", ROOT)):
        rev = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for width, steps in OLD_RECIPE:
                secs = train_seconds(tree, args.acts.resolve(), width, steps, Path(tmp))
                rows.append(dict(width=width, steps=steps, seconds=secs))
                print(label, rows[-1], flush=True)
        res["trees"][label] = dict(
            commit=rev.stdout.strip(), widths=rows, seconds=sum(r["seconds"] for r in rows)
        )
        Path(args.out).write_text(json.dumps(res, indent=1))
    before, this = res["trees"]["before"]["seconds"], res["trees"]["this"]["seconds"]
    old_steps = sum(s for _, s in OLD_RECIPE)
    res["speedup"] = before / this
    res["old_recipe_steps"] = old_steps
    res["current_demo_steps"] = sum(CURRENT_STEPS.values())
    res["current_demo_steps_ratio"] = res["current_demo_steps"] / old_steps
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("speedup", "old_recipe_steps", "current_demo_steps")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
