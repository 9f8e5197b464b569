"""GPU benchmark of the csrc extension against the Triton and torch paths (writes one JSON file).

    pip install --no-build-isolation --no-deps -e .   # builds stitchkit._C where nvcc exists
    python bench/extension_gpu.py --out bench/results/gpu_extension_<gpu>.json

Same shapes and codes as bench/kernels_gpu.py (n = 32,768, d_in = 768, L0 ~50):
- decoder gradient: the extension's CUB-sorted segmented reduction vs Triton sorted / atomics;
- co-activation C = F_a^T F_b of two SAEs' codes (d_sae 24,576 x 12,288): the extension's atomic
  kernel vs the torch reference (dense token chunks, then a matmul).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels_gpu import make  # noqa: E402

from stitchkit.ops import compiled  # noqa: E402
from stitchkit.ops.codes.naive import coactivation_reference  # noqa: E402
from stitchkit.ops.codes.triton import sparse_decoder_grad_atomic, sparse_decoder_grad_sorted  # noqa: E402
from stitchkit.ops.encode.triton import sae_forward_triton  # noqa: E402


def bench(fn):
    return do_bench(fn, warmup=20, rep=200, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not compiled.available():
        sys.exit("stitchkit._C is not built here")
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, grad=[], coactivation=None)
    codes = {}
    for d_sae in (24_576, 98_304, 12_288):
        x, W_enc, b_enc, W_dec, b_dec = make(d_sae, seed=d_sae)
        st = sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec)
        codes[d_sae] = (st.indices, st.values)
        if d_sae == 12_288:
            continue
        g = torch.randn_like(x)
        idx, val = st.indices, st.values
        ext = compiled.sparse_decoder_grad_segmented(idx, val, g, d_sae)
        row = dict(
            d_sae=d_sae,
            triton_sorted_ms=bench(lambda: sparse_decoder_grad_sorted(idx, val, g, d_sae)),
            triton_atomics_ms=bench(lambda: sparse_decoder_grad_atomic(idx, val, g, d_sae)),
            cuda_segmented_ms=bench(lambda: compiled.sparse_decoder_grad_segmented(idx, val, g, d_sae)),
            cuda_vs_triton_sorted_max_abs_diff=float(
                (ext - sparse_decoder_grad_sorted(idx, val, g, d_sae)).abs().max()
            ),
            cuda_deterministic=bool(
                torch.equal(ext, compiled.sparse_decoder_grad_segmented(idx, val, g, d_sae))
            ),
        )
        out["grad"].append(row)
        print(json.dumps(row), flush=True)
    (ia, va), (ib, vb) = codes[24_576], codes[12_288]
    c_ext = compiled.coactivation(ia, va, ib, vb, 24_576, 12_288)
    c_ref = coactivation_reference(ia, va, ib, vb, 24_576, 12_288)
    out["coactivation"] = dict(
        d_a=24_576,
        d_b=12_288,
        cuda_atomic_ms=bench(lambda: compiled.coactivation(ia, va, ib, vb, 24_576, 12_288)),
        torch_reference_ms=bench(lambda: coactivation_reference(ia, va, ib, vb, 24_576, 12_288)),
        max_abs_diff=float((c_ext - c_ref).abs().max()),
    )
    print(json.dumps(out["coactivation"]), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
