"""GPU benchmark of the similarity engine (run on a CUDA machine; writes one JSON file).

    python bench/gpu_similarity.py --out bench/results/gpu_similarity_<device>.json [--sweep]

Shapes: the reference work's largest comparison, Fq=98,304 x Fk=49,152 x d=768, decoder rows built
with structure (half of the large rows are noisy copies of a small row, cos ~0.8), so parent links
exist. For each precision (fp32 = IEEE fp32 products, tf32, bf16), in one run:
- triton_fused:     stitchkit's fused max/argmax kernel (no Fq x Fk matrix).
- triton_screened:  (fp32 only) what max_cosine runs for fp32 on Triton: a bf16 max, the keys within
                    bf16's proven error of it (per-row threshold pairs), their fp32 row products.
- faiss_algorithm:  FAISS-GPU's exact k-NN algorithm, re-enacted with torch because no FAISS GPU build
                    can be brought to the machine: query tiles of 512 rows x all keys (FAISS's
                    chooseTileSize for d > 32 on a > 8 GB GPU), one cuBLAS GEMM per tile, top-1 per
                    row, tiles alternating between two streams. Labelled as an emulation.
- torch_chunked:    stitchkit's torch reference (chunks sized from free memory).
- torch_matmul:     one plain torch.matmul of the whole [Fq, d] x [d, Fk] product: the rate ceiling.
Parent links (threshold 0.7): triton pair-emission kernel vs the chunked torch reference.
Times are medians of triton.testing.do_bench (CUDA events) after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stitchkit.ops.max_cosine import triton as K  # noqa: E402

FQ, FK, D = 98_304, 49_152, 768


def decoders(fq: int, fk: int, d: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    small = torch.randn(fk, d, device="cuda", generator=g)
    small /= small.norm(dim=1, keepdim=True)
    large = torch.randn(fq, d, device="cuda", generator=g)
    n_child = fq // 2
    parents = torch.randint(fk, (n_child,), device="cuda", generator=g)
    noise = torch.randn(n_child, d, device="cuda", generator=g) * (0.75 / d**0.5)
    large[:n_child] = small[parents] + noise  # cos ~ 0.8 with its parent
    large = large[torch.randperm(fq, device="cuda", generator=g)]
    large /= large.norm(dim=1, keepdim=True)
    return large.contiguous(), small.contiguous()


def cast(x: torch.Tensor, precision: str) -> torch.Tensor:
    return x.bfloat16() if precision == "bf16" else x


def faiss_algorithm(q: torch.Tensor, k: torch.Tensor, precision: str, streams) -> tuple:
    """FAISS-GPU bfKnn for k=1 (see module doc), in torch."""
    tile_rows = 512
    elem = 2 if precision == "bf16" else 4
    tile_cols = min((1 << 30) // (2 * elem) // tile_rows, k.shape[0])
    qc, kc = cast(q, precision), cast(k, precision)
    vals = torch.empty(q.shape[0], device=q.device)
    idx = torch.empty(q.shape[0], dtype=torch.int64, device=q.device)
    cur = torch.cuda.current_stream()
    for s in streams:
        s.wait_stream(cur)
    for t, r in enumerate(range(0, q.shape[0], tile_rows)):
        with torch.cuda.stream(streams[t % 2]):
            best_v = best_i = None
            for c in range(0, k.shape[0], tile_cols):
                sims = qc[r : r + tile_rows] @ kc[c : c + tile_cols].t()
                v, i = sims.max(dim=1)
                if best_v is None:
                    best_v, best_i = v.float(), i + c
                else:
                    better = v.float() > best_v
                    best_v, best_i = (
                        torch.where(better, v.float(), best_v),
                        torch.where(better, i + c, best_i),
                    )
            vals[r : r + tile_rows], idx[r : r + tile_rows] = best_v, best_i
    for s in streams:
        cur.wait_stream(s)
    return vals, idx


def bench(fn, rep_ms: int) -> float:
    return float(do_bench(fn, warmup=100, rep=rep_ms, return_mode="median"))


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on


CONFIGS = {
    "fp32": [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 128, 32, 4, 3),
        (128, 128, 16, 8, 4),
        (64, 64, 32, 4, 4),
        (128, 256, 32, 8, 3),
        (256, 128, 32, 8, 3),
    ],
    "bf16": [
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 128, 64, 4, 4),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (128, 128, 32, 8, 4),
        (128, 256, 64, 8, 4),
    ],
}
CONFIGS["tf32"] = CONFIGS["fp32"]


def as_cfg(c):
    return dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2], num_warps=c[3], num_stages=c[4])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--sweep", action="store_true", help="also time every launch configuration")
    ap.add_argument("--rep-ms", type=int, default=1500)
    ap.add_argument("--fq", type=int, default=FQ)
    ap.add_argument("--fk", type=int, default=FK)
    ap.add_argument("--d", type=int, default=D)
    args = ap.parse_args()
    fq, fk, d = args.fq, args.fk, args.d
    flops = 2.0 * fq * fk * d
    q, k = decoders(fq, fk, d)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    props = torch.cuda.get_device_properties(0)
    result = {
        "benchmark": "similarity: max cosine + parent links",
        "device": props.name,
        "sm_count": props.multi_processor_count,
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "shape": {"Fq": fq, "Fk": fk, "d": d},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timing": "median ms of triton.testing.do_bench (CUDA events), after warm-up",
        "max_cosine": {},
        "links": {},
        "sweep": {},
        "correctness": {},
    }

    # Correctness at full size, fp32: fused kernel vs chunked torch reference.
    set_tf32(False)
    ref_v, ref_i = K.max_ip_reference(q, k, "fp32")
    tri_v, tri_i = K.max_ip_triton(q, k, "fp32")
    result["correctness"]["max_fp32"] = {
        "max_abs_value_diff": float((ref_v - tri_v).abs().max()),
        "index_agreement": float((ref_i == tri_i).float().mean()),
    }
    for p in ("tf32", "bf16"):
        v, i = K.max_ip_triton(q, k, p)
        exact = (q * k[i]).sum(1)
        result["correctness"][f"max_{p}"] = {
            "max_abs_value_diff_vs_fp32": float((ref_v - v).abs().max()),
            "max_loss_of_chosen_vs_best_fp32": float((ref_v - exact).max()),
            "index_agreement": float((ref_i == i).float().mean()),
        }
    scr_v, scr_i = K.max_ip_screened_triton(q, k)
    best_bf16, _ = K.max_ip_triton(q, k, "bf16")
    cand = K.pairs_above_triton(q, k, best_bf16 - K.screen_slack(d), "bf16")[0]
    per_row = torch.bincount(cand, minlength=fq)
    result["correctness"]["max_fp32_screened"] = {
        "max_abs_value_diff": float((ref_v - scr_v).abs().max()),
        "index_agreement": float((ref_i == scr_i).float().mean()),
        "index_agreement_with_tf32x3_kernel": float((tri_i == scr_i).float().mean()),
        "candidates_per_row_mean": float(per_row.float().mean()),
        "candidates_per_row_max": int(per_row.max()),
    }
    del ref_v, ref_i, tri_v, tri_i, scr_v, scr_i, best_bf16, cand, per_row
    torch.cuda.empty_cache()

    if args.sweep:
        ops = {
            "max": lambda p, c: K.max_ip_triton(q, k, p, config=as_cfg(c)),
            "links": lambda p, c: K.pairs_above_triton(q, k, 0.7, p, config=as_cfg(c)),
        }
        for op, precisions in (("max", ("fp32", "tf32", "bf16")), ("links", ("fp32", "bf16"))):
            for p in precisions:
                rows = []
                for c in CONFIGS[p]:
                    try:
                        ms = bench(lambda c=c: ops[op](p, c), 400)
                    except Exception as e:  # out of shared memory etc.
                        rows.append({"config": c, "error": str(e)[:200]})
                        continue
                    rows.append({"config": c, "ms": ms, "tflops": flops / ms / 1e9})
                    print(f"sweep {op} {p} {c}: {ms:.2f} ms", flush=True)
                result["sweep"][f"{op}_{p}"] = rows

    for p in ("fp32", "tf32", "bf16"):
        set_tf32(p == "tf32")
        qc, kc = cast(q, p), cast(k, p)
        entry = {}
        entry["triton_fused_ms"] = bench(lambda: K.max_ip_triton(q, k, p), args.rep_ms)
        entry["faiss_algorithm_emulated_ms"] = bench(lambda: faiss_algorithm(q, k, p, streams), args.rep_ms)
        entry["torch_chunked_ms"] = bench(lambda: K.max_ip_reference(q, k, p), args.rep_ms)
        try:
            entry["torch_matmul_ms"] = bench(lambda: qc @ kc.t(), args.rep_ms)
        except torch.OutOfMemoryError:
            entry["torch_matmul_ms"] = None
        torch.cuda.empty_cache()
        for name in list(entry):
            if entry[name]:
                entry[name.replace("_ms", "_tflops")] = flops / entry[name] / 1e9
        entry["speedup_vs_faiss_algorithm"] = entry["faiss_algorithm_emulated_ms"] / entry["triton_fused_ms"]
        if p == "fp32":
            entry["triton_screened_ms"] = bench(lambda: K.max_ip_screened_triton(q, k), args.rep_ms)
            scr = entry["triton_screened_ms"]
            entry["screened_speedup_vs_faiss_algorithm"] = entry["faiss_algorithm_emulated_ms"] / scr
            entry["screened_speedup_vs_torch_chunked"] = entry["torch_chunked_ms"] / scr
        entry["speedup_vs_torch_chunked"] = entry["torch_chunked_ms"] / entry["triton_fused_ms"]
        if entry["torch_matmul_ms"]:
            entry["fraction_of_matmul_rate"] = entry["torch_matmul_ms"] / entry["triton_fused_ms"]
        result["max_cosine"][p] = entry
        print(p, json.dumps({kk: round(v, 3) for kk, v in entry.items() if v}), flush=True)
    set_tf32(False)

    for p in ("fp32", "bf16"):
        i, j, _ = K.pairs_above_triton(q, k, 0.7, p)
        ri, rj, _ = K.pairs_above_reference(q, k, 0.7, p)
        same = len(i) == len(ri) and torch.equal(
            torch.sort(i * fk + j).values, torch.sort(ri * fk + rj).values
        )
        entry = {
            "n_links_triton": len(i),
            "n_links_torch": len(ri),
            "identical_pair_sets": bool(same),
            "triton_ms": bench(lambda: K.pairs_above_triton(q, k, 0.7, p), args.rep_ms),
            "torch_chunked_ms": bench(lambda: K.pairs_above_reference(q, k, 0.7, p), args.rep_ms),
        }
        entry["speedup_vs_torch_chunked"] = entry["torch_chunked_ms"] / entry["triton_ms"]
        result["links"][p] = entry
        print("links", p, json.dumps(entry), flush=True)

    # Whole API, fp32: parent_links (normalise, find, fp32 check, sort) per backend. The Triton
    # path screens with bf16 at a proven margin and checks candidates in fp32: exact fp32 links.
    from stitchkit import parent_links

    a = parent_links(q, k, 0.7, backend="triton")
    b = parent_links(q, k, 0.7, backend="torch")
    entry = {
        "n_links_triton": len(a.child),
        "n_links_torch": len(b.child),
        "identical_links": bool(torch.equal(a.child, b.child) and torch.equal(a.parent, b.parent)),
        "triton_bf16_screen_fp32_check_ms": bench(
            lambda: parent_links(q, k, 0.7, backend="triton"), args.rep_ms
        ),
        "torch_chunked_fp32_ms": bench(lambda: parent_links(q, k, 0.7, backend="torch"), args.rep_ms),
    }
    entry["speedup"] = entry["torch_chunked_fp32_ms"] / entry["triton_bf16_screen_fp32_check_ms"]
    result["links"]["api_fp32_exact"] = entry
    print("links api fp32", json.dumps(entry), flush=True)

    result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
