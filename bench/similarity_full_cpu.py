"""The reference work's largest comparison on the CPU: 98,304 x 49,152 x 768, per backend,
in a fresh process each, reporting wall time and peak RSS (target: well under 8 GiB).

    python bench/similarity_full_cpu.py --out bench/results/cpu_similarity_full.json
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(backend: str, what: str, fq: int, fk: int, d: int) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from test_similarity_cpu import structured_decoders

    from stitchkit import max_cosine, parent_links

    large, small = structured_decoders(fq, fk, d)
    t0 = time.perf_counter()
    if what == "max_cosine":
        values, _ = max_cosine(large, small, backend=backend)
        n = int((values > 0.7).sum())
    else:
        n = len(parent_links(large, small, 0.7, backend=backend).child)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "backend": backend,
                "op": what,
                "seconds": secs,
                "peak_rss_gib": rss / 2**30,
                "result_count": n,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fq", type=int, default=98_304)
    ap.add_argument("--fk", type=int, default=49_152)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.fq, args.fk, args.d)
    runs = []
    for backend in ("torch", "faiss"):
        for op in ("max_cosine", "links"):
            cmd = [
                sys.executable,
                __file__,
                "--out",
                args.out,
                "--fq",
                str(args.fq),
                "--fk",
                str(args.fk),
                "--d",
                str(args.d),
                "--child",
                backend,
                op,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    import faiss
    import torch

    result = {
        "benchmark": "similarity on the CPU, full size",
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "python": platform.python_version(),
        },
        "shape": {"Fq": args.fq, "Fk": args.fk, "d": args.d},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "note": "peak RSS includes the inputs (Fq + Fk) x d fp32 = "
        f"{(args.fq + args.fk) * args.d * 4 / 2**30:.2f} GiB",
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
