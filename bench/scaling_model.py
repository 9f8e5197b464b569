#!/usr/bin/env python3
"""The scaling model of docs/scaling.md: per-rank compute, memory and communication of stitchkit's
two largest jobs at N ranks, from single-device rates measured on an H100 (bench/results/*_h100.json)
and stated interconnect bandwidths. Prints the tables docs/scaling.md holds; --json writes them.

    max cosine, 1M x 1M features, d = 2,304 and 4,096: queries sharded over ranks, every rank
        holds all keys (stitch.similarity); the answer is gathered (12 bytes per query row).
    decoder refit of a 1M-feature SAE on 1B tokens (fit.retrain, Adam): data-parallel over the
        global batch, the dense W_dec/b_dec gradient all-reduced every step.
Nothing here is a measurement at N > 1: it is arithmetic on the measured N = 1 rates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Stated bandwidths (bytes/s): NVLink 4 on H100/H200 SXM (900 GB/s bidirectional -> 450 GB/s each
# way), 400 Gb/s InfiniBand NDR per GPU between nodes (50 GB/s), a parallel filesystem read per
# rank (2 GB/s).
NVLINK = 450e9
IB = 50e9
FS_READ = 2e9
GPU_MEMORY = {"H100 80GB": 80e9, "H200 141GB": 141e9}
GPUS_PER_NODE = 8


def measured_rates() -> dict:
    sim = json.loads((RESULTS / "gpu_similarity_h100_screened.json").read_text())
    s = sim["shape"]
    flops = 2 * s["Fq"] * s["Fk"] * s["d"]
    mc_ms = sim["max_cosine"]["fp32"]["triton_screened_ms"]
    k = json.loads((RESULTS / "gpu_kernels_h100_98k.json").read_text())["shapes"][0]
    fw = 2 * k["n"] * k["d_sae"] * k["d_in"]  # the encoder product of one forward
    step_ms = (
        k["forward"]["bf16_triton_fused_ms"]
        + k["decode"]["triton_sparse_ms"]
        + k["decoder_grad"]["triton_sorted_ms"]
    )
    return {
        "device": sim["device"],
        "max_cosine_fp32_screened_flops_per_s": flops / (mc_ms / 1e3),
        "max_cosine_shape": s,
        "refit_flops_per_s": fw / (step_ms / 1e3),  # frozen bf16 encode + sparse decode + sparse grad
        "refit_shape": {"n": k["n"], "d_sae": k["d_sae"], "d_in": k["d_in"], "step_ms": step_ms},
    }


def ring_allreduce_s(nbytes: float, n: int) -> float:
    if n == 1:
        return 0.0
    bw = NVLINK if n <= GPUS_PER_NODE else IB
    return 2 * (n - 1) / n * nbytes / bw


def max_cosine_rows(rates: dict, ns=(1, 8, 64)) -> list[dict]:
    rows = []
    for d in (2304, 4096):
        F = 1_000_000
        flops = 2 * F * F * d
        keys = F * d * (4 + 2)  # fp32 unit rows + the bf16 screening copy
        for n in ns:
            compute = flops / n / rates["max_cosine_fp32_screened_flops_per_s"]
            load = F * d * 4 / FS_READ  # every rank reads the whole key SAE's decoder
            gather = F * 12 / (NVLINK if n <= GPUS_PER_NODE else IB) if n > 1 else 0.0
            total = compute + load + gather
            single = flops / rates["max_cosine_fp32_screened_flops_per_s"] + load
            rows.append(
                dict(
                    d=d,
                    N=n,
                    compute_s=compute,
                    key_load_s=load,
                    gather_s=gather,
                    total_s=total,
                    memory_per_rank_GB=(keys + F // n * d * 4) / 1e9,
                    efficiency=single / (n * total),
                )
            )
    return rows


def refit_rows(rates: dict, ns=(1, 8, 64), tokens=1e9, batch=32768) -> list[dict]:
    rows = []
    F = 1_000_000
    for d in (2304, 4096):
        flops_token = 2 * F * d
        grad_bytes = (F * d + d) * 4
        for global_batch in (batch, 1 << 20):
            steps = tokens / global_batch
            for n in ns:
                compute = global_batch / n * flops_token / rates["refit_flops_per_s"]
                comm = ring_allreduce_s(grad_bytes, n)
                step = compute + comm  # no overlap of the all-reduce with the backward (as built)
                mem = F * d * 2 + F * d * 4 * 4  # bf16 W_enc + fp32 W_dec, grad, Adam m and v
                rows.append(
                    dict(
                        d=d,
                        global_batch=global_batch,
                        N=n,
                        compute_s_per_step=compute,
                        allreduce_s_per_step=comm,
                        hours=steps * step / 3600,
                        memory_per_rank_GB=mem / 1e9,
                        efficiency=compute / step,
                    )
                )
    return rows


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(format(r[c[0]], c[2]) for c in cols) + " |" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write rates and tables here")
    args = ap.parse_args()
    rates = measured_rates()
    mc, rf = max_cosine_rows(rates), refit_rows(rates)
    print(f"measured on {rates['device']}: max cosine (fp32, screened) "
          f"{rates['max_cosine_fp32_screened_flops_per_s'] / 1e12:.0f} TFLOP/s; refit step "
          f"{rates['refit_flops_per_s'] / 1e12:.0f} TFLOP/s of encoder product")  # fmt: skip
    print(table(mc, [("d", "d", "d"), ("N", "N", "d"), ("compute_s", "compute s", ".2f"),
                     ("key_load_s", "key load s", ".1f"), ("gather_s", "gather s", ".4f"),
                     ("total_s", "total s", ".1f"), ("memory_per_rank_GB", "GB/rank", ".1f"),
                     ("efficiency", "efficiency", ".0%")]))  # fmt: skip
    print()
    print(table(rf, [("d", "d", "d"), ("global_batch", "global batch", "d"), ("N", "N", "d"),
                     ("compute_s_per_step", "compute s/step", ".3f"),
                     ("allreduce_s_per_step", "all-reduce s/step", ".3f"), ("hours", "hours", ".1f"),
                     ("memory_per_rank_GB", "GB/rank", ".0f"),
                     ("efficiency", "efficiency", ".0%")]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rates=rates, max_cosine=mc, refit=rf), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
