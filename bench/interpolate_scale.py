"""CPU: `interpolate` at the reference work's largest pair, 49,152 -> 98,304 x 768 over 20,000
tokens, on the synthetic family (stitchkit.data.family), against one forward pass of both SAEs
over the same tokens (issue 29's target: the interpolation within 3x of it). Records the path's
length, each part's seconds and the peak RSS; JSON written after every row.

    python bench/interpolate_scale.py --out bench/results/cpu_interpolate_scale.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stitchkit as sk  # noqa: E402
from stitchkit.data.family import make_family  # noqa: E402
from stitchkit.measure.accumulator import Batch  # noqa: E402
from stitchkit.stitch.interpolate import interpolation_path  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from path_metrics_cpu import cpu_name  # noqa: E402


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--before", type=Path, help="a checkout whose paths.py is the per-step loop")
    ap.add_argument("--before-tokens", type=int, default=4096, help="tokens to time both paths on")
    args = ap.parse_args()
    d_in, widths, n = (768, [49_152, 98_304], 20_000) if not args.quick else (64, [1024, 2048], 2000)
    res = dict(device=f"CPU: {cpu_name()}, {torch.get_num_threads()} threads", torch=torch.__version__,
               d_in=d_in, widths=widths, tokens=n, family="stitchkit.data.family.make_family(seed=0)",
               baseline="one forward pass of both SAEs: encode small and large, decode small",
               rows={})  # fmt: skip

    def save(key, value):
        res["rows"][key] = value
        print(key, value, flush=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    t0 = time.perf_counter()
    fam = make_family(d_in, widths, l0=(40.0, 60.0))
    small, large = fam.saes
    x = fam.sample(n, seed=1)
    save("build_family_s", round(time.perf_counter() - t0, 1))
    batches = list(x.split(4096))
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:
            batch = Batch(b)
            batch.features(small)
            batch.features(large)
            batch.reconstruction(small)
        save("forward_both_s", round(time.perf_counter() - t0, 1))
        t0 = time.perf_counter()
        c = sk.classify(small, large, 0.7)
        groups = sk.swap_groups(small, large, 0.7)
        steps, _ = interpolation_path(c, groups)
        save("classify_links_groups_s", round(time.perf_counter() - t0, 1))
        save("path_steps", len(steps))
        t0 = time.perf_counter()
        pm = sk.path_metrics(small, large, steps, batches)
        secs = time.perf_counter() - t0
        save("path_metrics_s", round(secs, 1))
        save("path_over_forward", round(secs / res["rows"]["forward_both_s"], 2))
        save("mse_small_plus_novel_end", [float(pm.mse[0]), float(pm.mse[-1])])
        if args.before:  # the per-step loop it replaced, on the first --before-tokens tokens
            from path_metrics_cpu import old_accumulator

            from stitchkit.measure.accumulator import measure
            from stitchkit.measure.paths import PathAccumulator

            part = [x[: args.before_tokens]]
            for name, cls in (("this_checkout", PathAccumulator), ("before", old_accumulator(args.before))):
                t0 = time.perf_counter()
                m = measure(cls(small, large, steps), part, small, None)
                save(f"path_metrics_{args.before_tokens}_tokens_{name}_s", round(time.perf_counter() - t0, 1))
                save(f"path_mse_end_{name}", float(m.mse[-1]))
    save("peak_rss_gib", round(peak_rss() / 2**30, 2))


if __name__ == "__main__":
    main()
