#!/usr/bin/env python3
"""The CPU targets for max cosine and parent links (issues 18, 31): the bf16 and int8 screens
(backend "cpu", each where it runs on this CPU as capped) against FAISS-CPU's exact search and the
chunked fp32 torch path, and what `auto` picks, in one run on one machine, on decoders
shaped like an SAE family's (bench/test_similarity_cpu.structured_decoders: half the large rows
near a small row). Writes its JSON after every row.

    python bench/cpu_bf16_screen.py --out bench/results/cpu_bf16_screen.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def cpu_info() -> dict:
    import torch

    name, flags = platform.processor(), []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    cfg = torch.__config__.show()
    onednn = next((ln.strip() for ln in cfg.splitlines() if "MKL-DNN" in ln or "oneDNN" in ln), "?")
    import os

    caps = {
        k: os.environ[k]
        for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "NUMBA_CPU_NAME", "MKL_ENABLE_INSTRUCTIONS",
                  "OPENBLAS_CORETYPE", "FAISS_OPT_LEVEL")  # fmt: skip
        if k in os.environ
    }
    return {
        "cpu": name,
        "isa_caps": caps or "none (the CPU as it is)",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onednn": onednn,
        "python": platform.python_version(),
    }


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def chunk_sweep(fk: int, d: int, rows_list=(64, 128, 256, 512, 1024), total: int = 4096) -> dict:
    """The bf16 product's rate (GFLOP/s) on `total` query rows in chunks of `rows` against fk keys,
    each chunk into one reused output (as ops.max_cosine.cpu does) and, at 512 rows, into a fresh
    output per chunk: what set cpu.CHUNK_BYTES / MAX_CHUNK_ROWS."""
    import torch

    kb = torch.randn(fk, d).bfloat16().t().contiguous()
    q = torch.randn(total, d).bfloat16()
    flops = 2 * total * fk * d
    out = {"Fk": fk, "d": d, "query_rows": total}
    for rows in rows_list:
        buf = torch.empty(rows, fk, dtype=torch.bfloat16)
        t, _ = timed(lambda: [torch.mm(q[s : s + rows], kb, out=buf) for s in range(0, total, rows)], 3)
        out[f"reused_{rows}_gflops"] = round(flops / t / 1e9)
    t, _ = timed(lambda: [q[s : s + 512] @ kb for s in range(0, total, 512)], 3)
    out["fresh_512_gflops"] = round(flops / t / 1e9)
    return out


def main() -> int:
    import torch
    from test_similarity_cpu import structured_decoders

    import stitchkit as sk
    from stitchkit.ops import dispatch
    from stitchkit.ops.max_cosine.int8_cpu import int8_key_range

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="the small shape only")
    ap.add_argument("--no-sweep", action="store_true", help="skip the bf16 chunk sweep")
    args = ap.parse_args()
    shapes = [(24_576, 12_288, 384)] + ([] if args.quick else [(98_304, 49_152, 768)])
    cpu = torch.device("cpu")
    res = {
        "benchmark": "CPU max cosine / parent links: the bf16 and int8 screens vs FAISS and fp32 torch",
        **cpu_info(),
        "int8_key_range": int8_key_range(),
        "table": {op: dispatch.similarity_screen(op) for op in ("max", "links")},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timing": "best of `repeat` wall-clock runs, each a full max_cosine / parent_links call",
        "rows": [],
        "chunk_sweep": [],
    }
    out = Path(args.out)
    # A screen is timed only where it runs on this CPU's units (as capped): bf16 without bf16 units
    # is emulated, and the int8 screen needs an exact int8 product.
    runs = (("bf16", dispatch.cpu_has_bf16()), ("int8", int8_key_range() is not None))
    screens = [s for s, ok in runs if ok]
    res["screens_timed"] = screens
    for _, fk, d in shapes if "bf16" in screens and not args.no_sweep else []:
        res["chunk_sweep"].append(chunk_sweep(fk, d))
        out.write_text(json.dumps(res, indent=1))
    for fq, fk, d in shapes:
        large, small = structured_decoders(fq, fk, d)
        repeat = 3 if fq * fk * d < 1e12 else 1
        row = {"Fq": fq, "Fk": fk, "d": d, "repeat": repeat}
        res["rows"].append(row)
        times = {}
        for screen in screens:
            with dispatch.configure(cpu_screen=screen):
                times[screen], got = timed(lambda: sk.max_cosine(large, small, backend="cpu"), repeat)
            row[f"max_cosine_{screen}_s"] = times[screen]
        times["faiss"], faiss = timed(lambda: sk.max_cosine(large, small, backend="faiss"), repeat)
        times["torch"], ref = timed(lambda: sk.max_cosine(large, small, backend="torch"), repeat)
        row.update({f"max_cosine_{k}_s": v for k, v in times.items()})
        row["auto_backend"] = dispatch.similarity_backend("auto", cpu, "max")
        row["auto_screen"] = dispatch.similarity_screen("max")
        row["max_cosine_auto_s"], auto = timed(lambda: sk.max_cosine(large, small), repeat)
        # >= ~1: auto is never slower than the best backend it skipped
        row["auto_vs_best_ratio"] = min(times.values()) / row["max_cosine_auto_s"]
        row["auto_speedup_vs_faiss"] = times["faiss"] / row["max_cosine_auto_s"]
        row["max_abs_value_diff_vs_torch"] = float((auto.values - ref.values).abs().max())
        row["index_agreement_vs_torch"] = float((auto.indices == ref.indices).float().mean())
        for screen in screens:
            row[f"max_cosine_{screen}_speedup_vs_faiss"] = times["faiss"] / times[screen]
            row[f"max_cosine_{screen}_speedup_vs_torch"] = times["torch"] / times[screen]
        out.write_text(json.dumps(res, indent=1))
        links_t = {}
        row["links_torch_fp32_s"], links_ref = timed(
            lambda: sk.parent_links(large, small, 0.7, backend="torch"), repeat
        )
        links_t["torch"] = row["links_torch_fp32_s"]
        for screen in screens:
            with dispatch.configure(cpu_screen=screen):
                links_t[screen], got = timed(
                    lambda: sk.parent_links(large, small, 0.7, backend="cpu"), repeat
                )
            row[f"links_{screen}_s"] = links_t[screen]
            row[f"links_{screen}_speedup_vs_torch"] = links_t["torch"] / links_t[screen]
            row[f"links_{screen}_identical"] = bool(
                torch.equal(got.child, links_ref.child) and torch.equal(got.parent, links_ref.parent)
            )
        row["links_faiss_s"], _ = timed(lambda: sk.parent_links(large, small, 0.7, backend="faiss"), repeat)
        links_t["faiss"] = row["links_faiss_s"]
        row["links_auto_backend"] = dispatch.similarity_backend("auto", cpu, "links")
        row["links_auto_screen"] = dispatch.similarity_screen("links")
        row["links_auto_s"], links = timed(lambda: sk.parent_links(large, small, 0.7), repeat)
        row["links_auto_speedup_vs_torch"] = row["links_torch_fp32_s"] / row["links_auto_s"]
        row["links_auto_vs_best_ratio"] = min(links_t.values()) / row["links_auto_s"]
        row["links_identical"] = bool(
            torch.equal(links.child, links_ref.child) and torch.equal(links.parent, links_ref.parent)
        )
        row["n_links"] = len(links.child)
        out.write_text(json.dumps(res, indent=1))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
