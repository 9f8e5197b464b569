"""CPU: the least-squares decoder refit (fit.retrain, method="lstsq") by the dense normal
equations and by conjugate gradients on the implicit Gram (fit.cg), time and peak memory, and
the CG answer's distance from the dense one where both fit. Each solve runs in a process of its
own so that its peak RSS is its own. Writes its JSON after every row.

SAEs are random relu SAEs whose encoder bias gives L0 about 50 (bench/path_metrics_cpu.relu_sae);
the tokens are Gaussian.

    python bench/refit_cpu.py --out bench/results/cpu_refit.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(d_in: int, d_sae: int, n: int, solver: str, out: str) -> None:
    """Run in a child: one refit; its seconds, peak RSS, MSE, and the decoder saved for comparison."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from path_metrics_cpu import relu_sae

    from stitchkit import evaluate, retrain_decoder

    sae = relu_sae(d_in, d_sae, 1, 50)
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    res = retrain_decoder(sae, list(x.split(4096)), method="lstsq", solver=solver, tol=1e-6)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(res.sae.W_dec.detach(), out + ".pt")
    Path(out).write_text(json.dumps(dict(seconds=secs, peak_rss_bytes=rss, mse=evaluate(res.sae, x).mse,
                                         mse_before=evaluate(sae, x).mse, algorithm=res.algorithm,
                                         iterations=res.steps)))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        d_in, d_sae, n, solver, out = args.child
        one(int(d_in), int(d_sae), int(n), solver, out)
        return
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from path_metrics_cpu import cpu_name

    shapes = [(768, 4096, 20_000, True), (768, 12_288, 20_000, True), (768, 24_576, 20_000, False)]
    if args.quick:
        shapes = [(32, 256, 2000, True)]
    res = dict(device=f"CPU: {cpu_name()}", torch=torch.__version__, python=platform.python_version(),
               tol=1e-6, rows=[])  # fmt: skip
    tmp = Path(args.out).with_suffix(".tmp")
    for d_in, d_sae, n, dense_too in shapes:
        row = dict(d_in=d_in, d_sae=d_sae, tokens=n, l0_target=50)
        for solver in ("dense", "cg") if dense_too else ("cg",):
            subprocess.run([sys.executable, __file__, "--out", args.out, "--child", str(d_in), str(d_sae),
                            str(n), solver, str(tmp)], check=True)  # fmt: skip
            got = json.loads(tmp.read_text())
            row[solver] = got
            if solver == "cg" and dense_too:
                a, b = torch.load(str(tmp) + ".pt"), row.pop("_dense_w")
                row["cg_vs_dense_rel_w"] = float((a - b).norm() / b.norm())
                row["cg_vs_dense_rel_mse"] = abs(got["mse"] / row["dense"]["mse"] - 1)
            elif solver == "dense":
                row["_dense_w"] = torch.load(str(tmp) + ".pt")
        res["rows"].append({k: v for k, v in row.items() if not k.startswith("_")})
        print(res["rows"][-1], flush=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    tmp.unlink(missing_ok=True)
    Path(str(tmp) + ".pt").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
