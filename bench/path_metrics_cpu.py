"""CPU: the interpolation path's metrics (measure.paths.PathAccumulator, event rounds) against the
per-step loop it replaced (--before TREE: that checkout's paths.py) and against the target's
baseline, one forward pass of both SAEs over the same tokens (issue 29: within 3x of it).

The path is the longest a pair can have: every large feature added alone, then all but one small
feature removed alone (F_small + F_large steps; the reference work's 49,152 -> 98,304 path had
42,142). SAEs are random relu SAEs whose encoder bias gives L0 about 50. Writes its JSON after
every row.

    python bench/path_metrics_cpu.py --out bench/results/cpu_path_metrics.json --before /tmp/old-clone
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stitchkit.measure.accumulator import Batch, measure  # noqa: E402
from stitchkit.measure.paths import PathAccumulator  # noqa: E402
from stitchkit.sae.model import SAE  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def relu_sae(d_in: int, d_sae: int, seed: int, l0: float) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, "relu", generator=g, name=f"relu-{d_sae}")
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        # pre-activations ~ N(b, 1): P(> 0) = l0 / d_sae sets b
        p = torch.tensor(l0 / d_sae, dtype=torch.float64)
        sae.b_enc.fill_(float(torch.special.ndtri(1 - p)) * -1.0)
        sae.b_dec.zero_()
    return sae.eval()


def old_accumulator(tree: Path):
    spec = importlib.util.spec_from_file_location(
        "stitchkit.measure._old_paths", tree / "stitchkit" / "measure" / "paths.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.PathAccumulator


def forward_both(small: SAE, large: SAE, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in x.split(4096):
            b = Batch(chunk)
            b.features(small)
            b.features(large)
            b.reconstruction(small)
    return time.perf_counter() - t0


def path_time(cls, small, large, steps, x) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.no_grad():
        pm = measure(cls(small, large, steps), list(x.split(4096)), small, None)
    return time.perf_counter() - t0, pm.mse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--before", type=Path, help="a checkout whose paths.py is the per-step loop")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    shapes = [(384, 1536, 3072, 2048, True), (384, 6144, 12288, 4096, True), (768, 12288, 24576, 8192, False)]
    if args.quick:
        shapes = [(64, 256, 512, 512, True)]
    old = old_accumulator(args.before) if args.before else None
    res = dict(
        device=f"CPU: {cpu_name()}, {torch.get_num_threads()} threads",
        torch=torch.__version__,
        python=platform.python_version(),
        baseline="one forward pass of both SAEs over the same tokens (encode small and large, decode small)",
        before=str(args.before) if args.before else None,
        rows=[],
    )
    for d_in, f_small, f_large, n, with_old in shapes:
        small, large = relu_sae(d_in, f_small, 1, 50), relu_sae(d_in, f_large, 2, 50)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(n, d_in, generator=g)
        steps = [([int(i)], []) for i in torch.randperm(f_large, generator=g)]
        steps += [([], [int(i)]) for i in torch.randperm(f_small, generator=g)[: f_small - 1]]
        fwd = forward_both(small, large, x)
        new_s, new_mse = path_time(PathAccumulator, small, large, steps, x)
        row = dict(d_in=d_in, f_small=f_small, f_large=f_large, tokens=n, steps=len(steps),
                   forward_both_s=round(fwd, 3), path_s=round(new_s, 3),
                   path_over_forward=round(new_s / fwd, 2))  # fmt: skip
        if old is not None and with_old:
            old_s, old_mse = path_time(old, small, large, steps, x)
            row.update(before_s=round(old_s, 3), speedup=round(old_s / new_s, 1),
                       max_rel_diff=float(((new_mse - old_mse).abs() / old_mse).max()))  # fmt: skip
        res["rows"].append(row)
        print(row, flush=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
