"""CPU: the sparse paths of the refits at the reference family's widest Frankenstein stage shape
(94,781 x 768, L0 177): one Adam step's decode and decoder gradient through the codes' nonzeros
against the dense f @ W and its backward (retrain_decoder on the CPU), and one Gram product of
the least-squares CG (fit.cg) merged over every kept token in float32 / float64 against the
per-chunk float64 products it replaced (embedding_bag per chunk, a [d_sae, d_in] block per chunk).
Both sides of each ratio run in this process, on the same random codes. JSON after every row.

    python bench/sparse_steps_cpu.py --out bench/results/cpu_sparse_steps.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from path_metrics_cpu import cpu_name  # noqa: E402

from stitchkit.fit.cg import SparseCodes  # noqa: E402
from stitchkit.ops.codes.cpu import FeatureMajor, decode_nonzeros, nonzeros_cpu  # noqa: E402


def best_of(fn, runs: int = 3) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def codes(n: int, F: int, l0: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(n, F)
    f.scatter_(1, torch.randint(0, F, (n, l0), generator=g), torch.rand(n, l0, generator=g))
    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, default=94_781)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--l0", type=int, default=177)
    ap.add_argument("--cg-tokens", type=int, default=20_000)
    args = ap.parse_args()
    F, d, l0 = args.d_sae, args.d_in, args.l0
    res = dict(device=f"CPU: {cpu_name()}, {torch.get_num_threads()} threads", torch=torch.__version__,
               d_sae=F, d_in=d, l0=l0, rows=[])  # fmt: skip
    out = Path(args.out)

    def row(r: dict) -> None:
        res["rows"].append(r)
        print(json.dumps(r), flush=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    n = 4096
    f = codes(n, F, l0, 0)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    W = (torch.randn(F, d, generator=torch.Generator().manual_seed(2)) * 0.03).requires_grad_(True)
    b = torch.zeros(d, requires_grad=True)

    def dense() -> None:
        W.grad = b.grad = None
        ((f @ W + b - x).pow(2).sum() / n).backward()

    def sparse() -> None:
        W.grad = b.grad = None
        nz = nonzeros_cpu(f)
        ((decode_nonzeros(nz, W, b) - x).pow(2).sum() / n).backward()

    td, ts = best_of(dense), best_of(sparse)
    row(dict(what="Adam step's decode + decoder gradient", batch=n, dense_s=td, nonzeros_s=ts, ratio=td / ts))

    m = args.cg_tokens
    chunks = [codes(min(4096, m - lo), F, l0, 10 + lo) for lo in range(0, m, 4096)]
    P = torch.randn(F + 1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kept = SparseCodes(F)
    for c in chunks:
        kept.add(c)
    kept.gram_times(P[:2].expand(F + 1, d).contiguous(), torch.float32)  # merge once, compile

    def per_chunk() -> None:  # the products CG took before: per chunk, embedding_bag in float64
        out = torch.zeros_like(P)
        for c in chunks:
            nz = nonzeros_cpu(c.double(), max_density=1.0)
            y = decode_nonzeros(nz, P[:-1], P[-1])
            out[:-1] += FeatureMajor(nz.rows, nz.cols, F).t_matmul(nz.values, y)
            out[-1] += y.sum(0)

    t_old = best_of(per_chunk, 1)
    t64 = best_of(lambda: kept.gram_times(P, torch.float64), 2)
    t32 = best_of(lambda: kept.gram_times(P, torch.float32), 2)
    row(dict(what="CG Gram product c1^T (c1 P)", tokens=m, per_chunk_float64_s=t_old, merged_float64_s=t64,
             merged_float32_s=t32, ratio_float32=t_old / t32, ratio_float64=t_old / t64))  # fmt: skip


if __name__ == "__main__":
    main()
