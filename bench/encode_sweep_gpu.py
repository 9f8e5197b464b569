"""Launch-configuration sweep of the fused encode (kernels.sae_forward) on a GPU: each
(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) x precision x compaction
(sae_forward.COMPACTIONS; None where this Triton cannot compile one), with and without emitting
the codes, at n = 32,768, d_in = 768, d_sae = 24,576 (or --d-sae), L0 ~50, bf16 also with W_enc
read as it is ("..._n_major_ms"); and the opt-in bf16 screen of the fp32 encode (precision="screen")
at each fp32 configuration. Writes one JSON file.

    python bench/encode_sweep_gpu.py --out bench/results/gpu_encode_sweep_<gpu>.json [--d-sae 98304]
        [--dtypes bf16 fp32]   (in this order by default; the file is rewritten after every row)

At 98,304 the tuned forward took 7.3x its 24,576 time for 4x the work. The likely cause, found
on the CPU (slot_overflow_cpu.py): about 10 of that batch's tokens pass the 128 default slots,
and an overflow used to re-run the whole batch (now only those tokens). The "no_codes_ms" column
(no slots, no re-run) against "cumsum_ms" at both sizes checks that.
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels_gpu  # noqa: E402

from stitchkit.ops.encode.triton import COMPACTIONS, encode_sparse_triton  # noqa: E402

CONFIGS = {
    "fp32": [
        (128, 64, 32, 4, 3),
        (128, 128, 32, 8, 3),
        (64, 128, 32, 4, 3),
        (128, 64, 32, 4, 4),
        (64, 64, 32, 4, 4),
    ],
    # The wider tiles spilled registers with the per-element compactions (255 registers at sm_90,
    # scripts/check_triton_compile.py --report); the per-row "peel" leaves them room.
    "bf16": [
        (128, 128, 64, 8, 3),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 4, 3),
        (128, 128, 64, 4, 4),
        (128, 256, 64, 8, 3),
        (64, 256, 64, 4, 3),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, default=24_576)
    ap.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    args = ap.parse_args()
    x, W_enc, b_enc, _, _ = kernels_gpu.make(args.d_sae)
    inputs = {"fp32": (x, W_enc, b_enc), "bf16": (x.bfloat16(), W_enc.bfloat16(), b_enc.bfloat16())}
    precisions = {"fp32": ["tf32x3", "tf32", "screen"], "bf16": [None]}
    out = dict(
        device=kernels_gpu.device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        shape=[kernels_gpu.N, kernels_gpu.D, args.d_sae],
        rows=[],
    )
    for dtype in args.dtypes:
        configs = CONFIGS[dtype]
        for prec in precisions[dtype]:
            for cfg in configs:
                c = dict(zip(["BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"], cfg))
                row = dict(dtype=dtype, precision=prec or "bf16", config=cfg)
                variants = [(f"{m}_ms", dict(compact=m)) for m in COMPACTIONS]
                if prec != "screen":  # the screen needs the codes
                    variants.append(("no_codes_ms", dict(emit_codes=False)))
                if dtype == "bf16":  # W_enc read as it is, no W_enc^T copy (sae_forward.BF16_W_LAYOUT)
                    variants += [(n[:-3] + "_n_major_ms", dict(kw, w_layout="n-major")) for n, kw in variants]
                for name, kw in variants:
                    args_ = (*inputs[dtype],)
                    fn = partial(encode_sparse_triton, *args_, config=c, precision=prec, **kw)
                    try:
                        fn()
                    except Exception as err:  # noqa: BLE001 - not compiled (no fallback when named), or too big
                        row[name] = None
                        row[name.replace("_ms", "_error")] = str(err)[:200]
                        continue
                    row[name] = do_bench(fn, warmup=20, rep=150, return_mode="median")
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
                # After every row, so a run cut off by its time limit keeps what it measured.
                Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
