"""GPU benchmark of the SAE kernels (run on a CUDA machine; writes one JSON file).

    python bench/kernels_gpu.py --out bench/results/gpu_kernels_<gpu>.json [--d-sae 24576 98304]

Shapes: n = 32,768 tokens, d_in = 768, d_sae in {24,576; 98,304}, encoder biases set so that L0 is
about 50 on Gaussian tokens (W_enc columns and W_dec rows of unit norm). Baselines in the same run:
- forward:  torch eager of the reference (dense pre, ReLU, dense decode, per-token stats), its
            torch.compile, and the encoder matmul alone (x @ W_enc), the floor any encoder pays.
- decode:   the dense equivalent f @ W_dec + b_dec with f dense [n, d_sae].
- gradient: the dense equivalent f^T g; both Triton variants (atomics, sorted).
- training: forward + backward of the relu + L1 loss, torch eager and torch.compile of the reference.
- topk:     the fused TopK forward against torch eager of the reference (dense pre, torch.topk,
            scatter, dense decode) and the encoder matmul, at --topk k, with each TopK encode:
            the row-stationary kernel ("merge", both merge variants) and the ReLU encode behind
            a per-token cut ("filter"); sae_forward.TOPK_METHOD should name the faster.
fp32 in torch's default mode (IEEE fp32 matmul, TF32 off) against the kernels' tf32x3 encode, and the
same with TF32 allowed in torch ("eager_tf32") for a like-for-like tensor-core comparison.
"forward_compactions" times the whole forward (bf16, and fp32 at the default precision) with each
slot compaction of the encode (sae_forward.COMPACTIONS: per-tile prefix sum, one atomic per hit,
or the per-row "peel"), and in bf16 with each W_enc layout (sae_forward.BF16_W_LAYOUT).
"encode_fp32_variants" times the opt-in fp32 route (precision="screen": bf16 encode of every
candidate the bf16 error bound allows, fp32 recomputation) beside the tf32x3 encode.
Times: medians of triton.testing.do_bench (CUDA events).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitchkit.ops.codes.triton import (  # noqa: E402
    sparse_decode_triton,
    sparse_decoder_grad_atomic,
    sparse_decoder_grad_sorted,
)
from stitchkit.ops.encode import triton as sae_forward_module  # noqa: E402
from stitchkit.ops.encode.naive import sae_forward_reference  # noqa: E402
from stitchkit.ops.encode.triton import (  # noqa: E402
    encode_sparse_triton,
    encode_topk_filtered,
    encode_topk_triton,
    sae_forward_triton,
)
from stitchkit.ops.sae_loss.naive import relu_sae_loss_reference  # noqa: E402
from stitchkit.ops.sae_loss.triton import relu_sae_loss  # noqa: E402

N, D, L0 = 32_768, 768, 50.0  # tokens, d_in, mean active features per token
# tests/test_gpu_bench_scripts.py runs these scripts on the CPU (Triton's interpreter) at toy shapes
# by setting DEVICE, N, D and L0, so a script error does not cost a GPU session's time.
DEVICE = "cuda"


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE


def make(d_sae: int, l0: float | None = None, seed: int = 0, device: str | None = None):
    l0, device = l0 or L0, device or DEVICE
    g = torch.Generator(device=device).manual_seed(seed)
    W_enc = torch.randn(D, d_sae, device=device, generator=g)
    W_enc /= W_enc.norm(dim=0, keepdim=True)
    W_dec = W_enc.t().contiguous()
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - l0 / d_sae)).item()
    b_enc = torch.full((d_sae,), -z, device=device)
    b_dec = torch.zeros(D, device=device)
    x = torch.randn(N, D, device=device, generator=g)
    return x, W_enc, b_enc, W_dec, b_dec


def stats_eager(x, W_enc, b_enc, W_dec, b_dec):
    pre = (x - b_dec) @ W_enc + b_enc
    f = torch.relu(pre)
    err = (f @ W_dec + b_dec - x).pow(2).sum(1)
    return err, f.sum(1), (f > 0).sum(1)


def stats_topk_eager(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(k, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    err = (f @ W_dec + b_dec - x).pow(2).sum(1)
    return err, f.sum(1), (f > 0).sum(1)


def topk_forward(x, W_enc, b_enc, W_dec, b_dec, k: int, mm_ms: float) -> dict:
    m = 4096
    default_method = sae_forward_module.TOPK_METHOD
    fwd = sae_forward_triton(x[:m], W_enc, b_enc, W_dec, b_dec, k=k)
    ref = sae_forward_reference(x[:m], W_enc, b_enc, W_dec, b_dec, k=k)
    rel = (fwd.sq_err - ref.sq_err).abs() / ref.sq_err.clamp_min(1e-6)
    out = {
        "k": k,
        "check": {
            "tokens_checked": m,
            "l0_equal_fraction": float((fwd.l0 == ref.l0).float().mean()),
            "sq_err_max_rel_diff": float(rel.max()),
        },
    }
    e_ms = bench(lambda: stats_topk_eager(x, W_enc, b_enc, W_dec, b_dec, k))
    e32_ms = bench(with_tf32(lambda: stats_topk_eager(x, W_enc, b_enc, W_dec, b_dec, k)))
    out.update(torch_eager_ms=e_ms, torch_eager_tf32_ms=e32_ms, encoder_matmul_ms=mm_ms)
    merges = ["topk", "sort"] if hasattr(triton.language, "topk") else ["sort"]
    xin = x - b_dec
    for merge in merges:
        enc = bench(lambda: encode_topk_triton(xin, W_enc, b_enc, k, merge=merge))
        out[f"triton_encode_{merge}_ms"] = enc
    out["triton_encode_filter_ms"] = bench(lambda: encode_topk_filtered(xin, W_enc, b_enc, k))
    a, b = encode_topk_triton(xin, W_enc, b_enc, k), encode_topk_filtered(xin, W_enc, b_enc, k)
    out["filter_vs_merge"] = {
        "l0_equal_fraction": float((a[3] == b[3]).float().mean()),
        "codes_identical": a[0].shape == b[0].shape and bool((a[0] == b[0]).all()),
        "values_max_abs_diff": float((a[1] - b[1]).abs().max()) if a[1].shape == b[1].shape else None,
    }
    for method in ("merge", "filter"):  # the whole forward with each TopK encode
        sae_forward_module.TOPK_METHOD = method
        f_ms = bench(lambda: sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec, k=k))
        out[method] = dict(
            triton_fused_ms=f_ms,
            speedup_vs_eager=e_ms / f_ms,
            speedup_vs_eager_tf32=e32_ms / f_ms,
            time_over_encoder_matmul=f_ms / mm_ms,
        )
    sae_forward_module.TOPK_METHOD = default_method
    return out


def compactions(x, W_enc, b_enc, W_dec, b_dec, fw: dict) -> dict:
    """The whole forward with each slot compaction of the encode (sae_forward.COMPACTIONS), bf16
    and the default fp32 precision, against the eager and matmul baselines in `fw`; codes checked
    against the default compaction's. A compaction that this Triton cannot compile is recorded as
    such (the default encode falls back past it)."""
    out = {}
    xb, Web, beb, Wdb, bdb = (t.bfloat16() for t in (x, W_enc, b_enc, W_dec, b_dec))
    cases = {
        "bf16": ((xb, Web, beb, Wdb, bdb), fw["bf16_torch_eager_ms"], fw["bf16_encoder_matmul_ms"]),
        "fp32": ((x, W_enc, b_enc, W_dec, b_dec), fw["torch_eager_ms"], fw["encoder_matmul_ms"]),
    }
    for dtype, ((xx, We, be, Wd, bd), eager_ms, mm_ms) in cases.items():
        xin = xx - bd
        default = encode_sparse_triton(xin, We, be)
        # bf16 also with W_enc read as it is (sae_forward.BF16_W_LAYOUT), which spares a copy.
        layouts = ["k-major", "n-major"] if dtype == "bf16" else ["k-major"]
        for compact, layout in [(c, w) for w in layouts for c in sae_forward_module.COMPACTIONS]:
            kw = dict(compact=compact, w_layout=layout)
            name = f"{dtype}_{compact}" + ("_n_major" if layout == "n-major" else "")

            def forward(kw=kw):
                idx, val, _, _ = encode_sparse_triton(xin, We, be, **kw)
                return sparse_decode_triton(idx, val, Wd, bd, xx)

            try:
                idx, val, _, l0 = encode_sparse_triton(xin, We, be, **kw)
            except RuntimeError as err:
                out[name] = {"compiles": False, "error": str(err)[:300]}
                continue
            f_ms = bench(forward)
            out[name] = dict(
                triton_fused_ms=f_ms,
                encode_ms=bench(lambda kw=kw: encode_sparse_triton(xin, We, be, **kw)),
                speedup_vs_eager=eager_ms / f_ms,
                time_over_encoder_matmul=f_ms / mm_ms,
                codes_identical_to_default=idx.shape == default[0].shape and bool((idx == default[0]).all()),
                l0_identical_to_default=bool((l0 == default[3]).all()),
            )
    return out


def encode_fp32_variants(xin, W_enc, b_enc) -> dict:
    """The fp32 screen against the tf32x3 encode on x already shifted by b_dec: medians and
    whether both give every token the same L0."""
    ms = {
        p: bench(lambda p=p: encode_sparse_triton(xin, W_enc, b_enc, precision=p))
        for p in ("screen", "tf32x3")
    }
    l0 = {p: encode_sparse_triton(xin, W_enc, b_enc, precision=p)[3] for p in ms}
    return {
        "screen_ms": ms["screen"],
        "tf32x3_ms": ms["tf32x3"],
        "screen_over_tf32x3": ms["screen"] / ms["tf32x3"],
        "l0_equal_fraction": float((l0["screen"] == l0["tf32x3"]).float().mean()),
    }


def bench(fn, rep=300):
    return do_bench(fn, warmup=50, rep=rep, return_mode="median")


def with_tf32(fn):
    def run():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    return run


def one_shape(d_sae: int, compile_baselines: bool, topk: int) -> dict:
    x, W_enc, b_enc, W_dec, b_dec = make(d_sae)
    res: dict = {"d_sae": d_sae, "n": N, "d_in": D}
    fwd = sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec)
    m = 4096  # the reference's int64 sort keys [m, d_sae] must fit beside everything else
    ref = sae_forward_reference(x[:m], W_enc, b_enc, W_dec, b_dec)
    res["l0_mean"] = float(fwd.l0.mean())
    # Tokens past the encode's 128 default slots are encoded a second time, alone.
    res["l0_max"] = float(fwd.l0.max())
    res["tokens_over_128_slots"] = int((fwd.l0 > 128).sum())
    res["forward_check"] = {
        "tokens_checked": m,
        "l0_equal_fraction": float((fwd.l0[:m] == ref.l0).float().mean()),
        "sq_err_max_rel_diff": float(
            ((fwd.sq_err[:m] - ref.sq_err).abs() / ref.sq_err.clamp_min(1e-6)).max()
        ),
    }
    del ref
    f_ms = bench(lambda: sae_forward_triton(x, W_enc, b_enc, W_dec, b_dec))
    res["encode_fp32_variants"] = encode_fp32_variants(x - b_dec, W_enc, b_enc)
    e_ms = bench(lambda: stats_eager(x, W_enc, b_enc, W_dec, b_dec))
    e32_ms = bench(with_tf32(lambda: stats_eager(x, W_enc, b_enc, W_dec, b_dec)))
    mm_ms = bench(lambda: x @ W_enc)
    mm32_ms = bench(with_tf32(lambda: x @ W_enc))
    fw = {
        "triton_fused_ms": f_ms,
        "torch_eager_ms": e_ms,
        "torch_eager_tf32_ms": e32_ms,
        "encoder_matmul_ms": mm_ms,
        "encoder_matmul_tf32_ms": mm32_ms,
        "speedup_vs_eager": e_ms / f_ms,
        "speedup_vs_eager_tf32": e32_ms / f_ms,
        "time_over_encoder_matmul": f_ms / mm_ms,
        "time_over_encoder_matmul_tf32": f_ms / mm32_ms,
    }
    if compile_baselines:
        compiled = torch.compile(stats_eager)
        compiled(x, W_enc, b_enc, W_dec, b_dec)
        c_ms = bench(lambda: compiled(x, W_enc, b_enc, W_dec, b_dec))
        fw.update(torch_compile_ms=c_ms, speedup_vs_compile=c_ms / f_ms)
    xb, Web, beb, Wdb, bdb = (t.bfloat16() for t in (x, W_enc, b_enc, W_dec, b_dec))
    fb_ms = bench(lambda: sae_forward_triton(xb, Web, beb, Wdb, bdb))
    eb_ms = bench(lambda: stats_eager(xb, Web, beb, Wdb, bdb))
    mmb_ms = bench(lambda: xb @ Web)
    fw.update(
        bf16_triton_fused_ms=fb_ms,
        bf16_torch_eager_ms=eb_ms,
        bf16_encoder_matmul_ms=mmb_ms,
        bf16_speedup_vs_eager=eb_ms / fb_ms,
        bf16_time_over_encoder_matmul=fb_ms / mmb_ms,
    )
    res["forward"] = fw
    res["forward_compactions"] = compactions(x, W_enc, b_enc, W_dec, b_dec, fw)
    if topk:
        res["forward_topk"] = topk_forward(x, W_enc, b_enc, W_dec, b_dec, topk, mm_ms)

    idx, val = fwd.indices, fwd.values
    dense = torch.zeros(N, d_sae, device=DEVICE)
    ok = idx >= 0
    rows = torch.arange(N, device=DEVICE)[:, None].expand_as(idx)
    dense[rows[ok], idx[ok].long()] = val[ok]
    res["density"] = float(ok.sum()) / (N * d_sae)
    d_ms = bench(lambda: sparse_decode_triton(idx, val, W_dec, b_dec))
    dd_ms = bench(lambda: dense @ W_dec + b_dec)
    dd32_ms = bench(with_tf32(lambda: dense @ W_dec + b_dec))
    res["decode"] = {
        "triton_sparse_ms": d_ms,
        "dense_matmul_ms": dd_ms,
        "dense_matmul_tf32_ms": dd32_ms,
        "speedup_vs_dense": dd_ms / d_ms,
        "speedup_vs_dense_tf32": dd32_ms / d_ms,
    }
    g = torch.randn(N, D, device=DEVICE)
    ga_ms = bench(lambda: sparse_decoder_grad_atomic(idx, val, g, d_sae))
    gs_ms = bench(lambda: sparse_decoder_grad_sorted(idx, val, g, d_sae))
    gd_ms = bench(lambda: dense.t() @ g)
    a, s_ = sparse_decoder_grad_atomic(idx, val, g, d_sae), sparse_decoder_grad_sorted(idx, val, g, d_sae)
    res["decoder_grad"] = {
        "triton_atomics_ms": ga_ms,
        "triton_sorted_ms": gs_ms,
        "dense_matmul_ms": gd_ms,
        "speedup_atomics_vs_dense": gd_ms / ga_ms,
        "speedup_sorted_vs_dense": gd_ms / gs_ms,
        "atomics_vs_sorted_max_abs_diff": float((a - s_).abs().max()),
        "sorted_run_to_run_identical": bool(torch.equal(s_, sparse_decoder_grad_sorted(idx, val, g, d_sae))),
        "atomics_run_to_run_identical": bool(torch.equal(a, sparse_decoder_grad_atomic(idx, val, g, d_sae))),
    }
    dense = None  # free 3-13 GB before the training step

    params = [t.clone().requires_grad_(True) for t in (W_enc, b_enc, W_dec, b_dec)]

    def step(loss_fn):
        def run():
            mse, l1, _ = loss_fn(x, *params, 1e-3)
            (mse + l1).backward()
            for p in params:
                p.grad = None

        return run

    t_ms = bench(step(relu_sae_loss), rep=200)
    te_ms = bench(step(relu_sae_loss_reference), rep=200)
    te32_ms = bench(with_tf32(step(relu_sae_loss_reference)), rep=200)
    tr = {
        "triton_ms": t_ms,
        "torch_eager_ms": te_ms,
        "torch_eager_tf32_ms": te32_ms,
        "speedup_vs_eager": te_ms / t_ms,
        "speedup_vs_eager_tf32": te32_ms / t_ms,
    }
    if compile_baselines:
        comp = torch.compile(relu_sae_loss_reference)
        step(comp)()
        tc_ms = bench(step(comp), rep=200)
        tr.update(torch_compile_ms=tc_ms, speedup_vs_compile=tc_ms / t_ms)
    res["training_step"] = tr
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-sae", type=int, nargs="+", default=[24_576, 98_304])
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--topk", type=int, default=32, help="k of the TopK forward (0: skip it)")
    args = ap.parse_args()
    results = {
        "device": device_name(),
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
        },
        "shapes": [],
    }
    for d_sae in args.d_sae:
        r = one_shape(d_sae, not args.no_compile, args.topk)
        results["shapes"].append(r)
        print(json.dumps(r), flush=True)
        # After every shape, so a run cut off by its time limit keeps the shapes it finished.
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
