#!/usr/bin/env python3
"""Compile stitchkit's Triton kernels for real GPUs without one, with the installed Triton (compile
only: Triton's own ptxas, no driver), at the launch parameters a GPU uses, so that a Triton that
cannot compile a GPU path fails CI. Triton 3.9 cannot compile the fused encode's "atomic" slot
compaction for sm_80 / sm_90, and Triton 3.6 neither bf16 "cumsum" nor "peel" for sm_100; the
encode falls back along ops.encode.triton.COMPACTIONS, so each of its variants needs one compaction
that compiles. Every other kernel must compile as it is.

    python scripts/check_triton_compile.py [--arch 80 90 100] [--report FILE]

--report FILE also records which compactions of the ReLU encode compile per arch and dtype
("matrix"), and compiles every compaction at sm_90, with and without codes, at the GPU launch
configurations, with each one's registers, stack (spilled) bytes, shared memory, programs an SM
holds at once, and SASS instruction mix (cuobjdump / nvdisasm from Triton's wheel) ("sm_90"), and
the same for every other kernel ("sm_90_other_kernels"): a static reading of the code, not a
timing.
Exits 0 with a note where Triton or its NVIDIA backend is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be JIT functions, not interpreted
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The encode's variants on a GPU, as sae_forward launches them: (name, dtype, compile-time flags).
# fp32 runs tf32x3; the screen and the TopK filter's candidates run the ReLU encode kernel too.
VARIANTS = [
    ("relu", "fp32", dict(PRECISION="tf32x3")),
    ("jumprelu", "fp32", dict(PRECISION="tf32x3", HAS_TH=True)),
    ("topk_filter", "fp32", dict(PRECISION="tf32x3", ROW_CUT=True)),
    ("relu", "bf16", dict(PRECISION="bf16")),
    ("relu_n_major", "bf16", dict(PRECISION="bf16", W_KMAJOR=False)),  # BF16_W_LAYOUT = "n-major"
    ("screen", "bf16", dict(PRECISION="bf16", SCREEN=True)),
    ("screen_jumprelu", "bf16", dict(PRECISION="bf16", SCREEN=True, HAS_TH=True)),
]
# With codes, L1 and L0 come from them (STATS=False); only an encode without codes writes partials.
FLAGS = dict(
    HAS_TH=False, ROW_CUT=False, SCREEN=False, STATS=False, EMIT_CODES=True, W_KMAJOR=True, GROUP_M=8
)
INTS = ("n", "F", "D", "capacity", "stride_x", "stride_w")  # all multiples of 16 at the bench shape


def compile_kernel(arch: int, kernel: str, types: dict, consts: dict, warps: int, stages: int) -> dict:
    """Compile stitchkit.ops.<kernel> ("module.name") for sm_<arch> with these argument types
    (the rest of its arguments are constexprs): {"ok": True, "cubin": bytes} or {"ok": False,
    "error"}. Pointers and integers are declared 16-divisible, as Triton specialises them at the
    bench shapes."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name = kernel.rsplit(".", 1)
    fn = getattr(importlib.import_module(f"stitchkit.ops.{module}"), name)
    names = fn.arg_names
    sig = {a: types.get(a, "constexpr") for a in names}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, t in types.items() if t != "fp32"}
    # A failing MLIR pass writes its whole module to fd 2; the error's last line says enough.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            out = triton.compile(
                ASTSource(fn, sig, constexprs=consts, attrs=attrs),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=warps, num_stages=stages),
            )
    except Exception as err:  # noqa: BLE001 - any compiler failure is the finding
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        return dict(ok=False, error=f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300])
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return dict(ok=True, cubin=out.asm["cubin"], shared=out.metadata.shared, warps=warps)


def compile_encode(arch: int, dtype: str, flags: dict, compact: str, config: tuple) -> dict:
    """compile_kernel for one fused encode (ops.encode.kernels._encode_kernel)."""
    # x, W_enc^T, b_enc and the threshold share the input dtype, except in the screen (bf16 x and
    # W_enc^T, fp32 model); its norms and a row cut are fp32; the codes and partial sums int32 / fp32.
    model = "fp32" if flags.get("SCREEN") else dtype
    types = dict(X=dtype, WT=dtype, B_ENC=model, TH=model, RC="fp32", XN="fp32", WN="fp32")
    types.update(IDX="i32", VAL="fp32", COUNT="i32", L1P="fp32", L0P="fp32")
    types = {a: "*" + t for a, t in types.items()} | dict.fromkeys(INTS, "i32") | {"margin": "fp32"}
    m, n, k, warps, stages = config
    consts = dict(FLAGS, **flags, COMPACT=compact, BLOCK_M=m, BLOCK_N=n, BLOCK_K=k)
    return compile_kernel(arch, "encode.kernels._encode_kernel", types, consts, warps, stages)


def other_kernels() -> list[tuple[str, str, dict, dict, int, int]]:
    """The other Triton kernels as a GPU launches them: (label, kernel, types, consts, warps,
    stages), with the launch parameters of the wrappers named beside each."""
    import triton.language as tl

    from stitchkit.ops.codes import triton as sparse_codes
    from stitchkit.ops.max_cosine import triton as max_cosine

    i32, out = "i32", []
    for dtype, prec in (("fp32", "tf32x3"), ("bf16", "bf16")):
        # encode_topk_triton at k = 32: R = 32, BLOCK_M = 4096 // R capped at 64.
        types = dict(X="*" + dtype, WT="*" + dtype, B_ENC="*" + dtype, IDX="*i32", VAL="*fp32")
        types |= dict(L1="*fp32", L0="*fp32") | dict.fromkeys(
            ("n", "F", "D", "k", "stride_x", "stride_w"), i32
        )
        merge = "topk" if hasattr(tl, "topk") else "sort"
        consts = dict(PRECISION=prec, MERGE=merge, BLOCK_M=64, R=32, BLOCK_K=32)
        out.append((f"topk {dtype}", "encode.kernels._encode_topk_kernel", types, consts, 4, 2))
    for precision in max_cosine.PRECISIONS:  # max_cosine_triton / pairs_above_triton
        dtype = "bf16" if precision == "bf16" else "fp32"
        tl_precision = {"fp32": "tf32x3", "tf32": "tf32", "bf16": "bf16"}[precision]
        ints = dict.fromkeys(("Fq", "Fk", "D", "stride_q", "stride_k", "keys_per_split"), i32)
        for kind, kernel, extra in (
            ("max", "_max_ip_kernel", dict(VAL="*fp32", IDX="*i32")),
            (
                "pairs",
                "_pairs_kernel",
                dict(OUT_I="*i32", OUT_J="*i32", OUT_V="*fp32", COUNTER="*i32", TH="*fp32"),
            ),
        ):
            m, n, k, w, s = max_cosine._CONFIGS[(kind, precision)]
            types = dict(Q="*" + dtype, K="*" + dtype, **extra, **ints) | (
                {"capacity": i32} if kind == "pairs" else {}
            )
            consts = dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, PRECISION=tl_precision)
            out.append((f"{kind} {precision}", f"max_cosine.triton.{kernel}", types, consts, w, s))
    rows = sparse_codes._row_blocks(True)
    blocks, warps = dict(BLOCK_N=rows["BLOCK_N"], BLOCK_D=rows["BLOCK_D"]), rows["num_warps"]
    for dtype in ("fp32", "bf16"):
        types = dict(
            IDX="*i32", VAL="*fp32", W="*" + dtype, B="*" + dtype, X="*" + dtype, OUT="*fp32", ERR="*fp32"
        )
        types |= dict.fromkeys(("n", "k", "d", "stride_idx", "stride_w", "stride_x", "stride_out"), i32)
        out.append(
            (f"decode {dtype}", "codes.triton._decode_kernel", types, dict(HAS_X=True, **blocks), warps, 3)
        )
    types = dict(IDX="*i32", G="*fp32", W="*fp32", OUT="*fp32")
    types |= dict.fromkeys(("n", "k", "d", "stride_idx", "stride_g", "stride_w"), i32)
    out.append(("rowdot", "codes.triton._rowdot_kernel", types, blocks, warps, 3))
    types = dict(IDX="*i32", VAL="*fp32", G="*fp32", DW="*fp32")
    types |= dict.fromkeys(("n", "k", "d", "stride_idx", "stride_g"), i32)
    out.append(("grad atomic", "codes.triton._grad_atomic_kernel", types, blocks, warps, 3))
    # sparse_decoder_grad_sorted: BLOCK_E = 32, BLOCK_D = 128, 4 warps.
    types = dict(SEG_FEATURE="*i64", SEG_START="*i64", TOK="*i32", VAL="*fp32", G="*fp32", DW="*fp32")
    types |= dict(d=i32, stride_g=i32)
    out.append(
        ("grad sorted", "codes.triton._grad_sorted_kernel", types, dict(BLOCK_E=32, BLOCK_D=128), 4, 3)
    )
    return out


def other_case(
    arch: int,
    label: str,
    kernel: str,
    types: dict,
    consts: dict,
    warps: int,
    stages: int,
    summary: bool = False,
) -> dict:
    got = compile_kernel(arch, kernel, types, consts, warps, stages)
    return result_row(got, summary, arch=f"sm_{arch}", kernel=label)


def result_row(got: dict, summary: bool, **labels) -> dict:
    """A compile's row: its labels, whether it compiled, and its error or (if asked) its SASS summary."""
    row = dict(labels, ok=got["ok"])
    if not got["ok"]:
        row["error"] = got["error"]
    elif summary:
        row.update(sass_summary(got["cubin"]))
        row.update(
            shared_bytes=got["shared"], ctas_per_sm=ctas_per_sm(row["registers"], got["shared"], got["warps"])
        )
    return row


def ctas_per_sm(registers: int, shared: int, warps: int) -> int:
    """How many of these programs one Hopper SM holds at once (sm_90: 64K registers, allocated per
    warp in units of 256; 228 KB of shared memory, 1 KB of it reserved per block; 64 warps), the
    most a kernel's tiles can overlap their loads, products and epilogues across programs."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(65_536 // (per_warp * warps), 233_472 // (shared + 1024), 64 // warps, 32)


def sass_summary(cubin: bytes) -> dict:
    """Registers, stack bytes and the SASS instruction mix of one compiled kernel."""
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        res = subprocess.run(
            [tools / "cuobjdump", "-res-usage", fh.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run([tools / "nvdisasm", "-c", fh.name], capture_output=True, text=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res)}
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, flags=re.M)
    mix = Counter(ops)
    classes = {
        "tensor_core": ("HGMMA", "HMMA"),
        "atomic": ("ATOMG", "RED", "REDG", "ATOM", "ATOMS"),
        "global_store": ("STG",),
        "local_spill": ("STL", "LDL"),
        "shuffle": ("SHFL",),
        "barrier": ("BAR",),
    }
    counts = {c: sum(mix[o] for o in names) for c, names in classes.items()}
    return dict(registers=usage.get("reg"), stack_bytes=usage.get("stack"), instructions=len(ops), **counts)


def case(arch: int, name: str, dtype: str, flags: dict, compact: str, config: tuple, summary: bool) -> dict:
    got = compile_encode(arch, dtype, flags, compact, config)
    labels = dict(arch=f"sm_{arch}", variant=name, dtype=dtype, compact=compact, config=list(config))
    return result_row(got, summary, **labels)


def gpu_config(dtype: str) -> tuple[tuple, str]:
    from stitchkit.ops.encode.triton import _CONFIGS

    *config, compact = _CONFIGS[dtype]
    return tuple(config), compact


def first_compiling(arch: int, name: str, dtype: str, flags: dict) -> list[dict]:
    """The compactions of one (arch, variant) in the encode's fallback order, until one compiles."""
    from stitchkit.ops.encode.triton import compaction_order

    config, first = gpu_config(dtype)
    rows = []
    for compact in compaction_order(first):
        rows.append(case(arch, name, dtype, flags, compact, config, False))
        if rows[-1]["ok"]:
            break
    return rows


def check(archs: list[int], pool: ProcessPoolExecutor) -> list[dict]:
    futures = [pool.submit(first_compiling, arch, *v) for arch in archs for v in VARIANTS]
    return [row for f in futures for row in f.result()]


def matrix(archs: list[int], pool: ProcessPoolExecutor) -> list[dict]:
    """Whether each compaction of the ReLU encode compiles, per arch and dtype."""
    from stitchkit.ops.encode.triton import COMPACTIONS

    relu = [(dtype, flags) for name, dtype, flags in VARIANTS if name == "relu"]
    jobs = [(arch, dt, f, c) for arch in archs for dt, f in relu for c in COMPACTIONS]
    futures = [pool.submit(case, arch, "relu", dt, f, c, gpu_config(dt)[0], False) for arch, dt, f, c in jobs]
    return [f.result() for f in futures]


def report(pool: ProcessPoolExecutor) -> list[dict]:
    """Every compaction at sm_90, with and without codes, at each dtype's GPU configuration, at
    a wider bf16 tile that the sweep found too costly with the per-element compactions, and at
    the sweep's widest bf16 tiles (bench/encode_sweep_gpu.py, not yet timed)."""
    from stitchkit.ops.encode.triton import COMPACTIONS

    jobs = []
    for dtype, configs in (
        ("fp32", [gpu_config("fp32")[0]]),
        ("bf16", [gpu_config("bf16")[0], (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 256, 64, 4, 3)]),
    ):
        flags = dict(PRECISION="tf32x3" if dtype == "fp32" else "bf16")
        for config in configs:
            jobs.append(("no_codes", dtype, dict(flags, EMIT_CODES=False, STATS=True), "cumsum", config))
            jobs += [("relu", dtype, flags, c, config) for c in COMPACTIONS]
            if dtype == "bf16":  # W_enc read as it is (BF16_W_LAYOUT), against the rows above
                jobs.append(
                    (
                        "no_codes_n_major",
                        dtype,
                        dict(flags, EMIT_CODES=False, STATS=True, W_KMAJOR=False),
                        "cumsum",
                        config,
                    )
                )
                jobs += [("relu_n_major", dtype, dict(flags, W_KMAJOR=False), c, config) for c in COMPACTIONS]
    futures = [pool.submit(case, 90, *job, True) for job in jobs]
    return [f.result() for f in futures]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90, 100])
    ap.add_argument("--report", help="also write sm_90 resource usage and SASS mix to this JSON file")
    args = ap.parse_args()
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as err:
        print(f"check_triton_compile: skipped, no Triton with a GPU backend here ({err})")
        return 0
    if not (Path(triton.__file__).parent / "backends" / "nvidia").is_dir():
        print("check_triton_compile: skipped, this Triton has no NVIDIA backend")
        return 0
    failed = 0
    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rows = check(args.arch, pool)
        for row in rows:  # a compaction that does not compile is the encode's to fall back from
            state = "ok" if row["ok"] else "does not compile, the encode falls back: " + row["error"]
            where = f"{row['arch']} {row['dtype']} {row['variant']} {row['compact']}"
            print(f"check_triton_compile: {where}: {state}")
        for arch in args.arch:
            for name, dtype, _ in VARIANTS:
                mine = [
                    r for r in rows if (r["arch"], r["variant"], r["dtype"]) == (f"sm_{arch}", name, dtype)
                ]
                if not any(r["ok"] for r in mine):
                    failed += 1
                    print(f"check_triton_compile: sm_{arch} {dtype} {name}: no compaction compiles")
        futures = [pool.submit(other_case, arch, *spec) for arch in args.arch for spec in other_kernels()]
        others = [f.result() for f in futures]
        for row in others:
            state = "ok" if row["ok"] else "FAILED: " + row["error"]
            print(f"check_triton_compile: {row['arch']} {row['kernel']}: {state}")
            failed += not row["ok"]
        if args.report:
            out = dict(
                what=(
                    "static: compiled, not run (no GPU); registers, stack bytes, shared bytes, "
                    "programs per SM (sm_90), SASS instruction counts"
                ),
                triton=triton.__version__,
                kernel="stitchkit.ops.encode.kernels._encode_kernel",
                fallback=rows,
                other_kernels=others,
                matrix=matrix(args.arch, pool),
                sm_90=report(pool),
                sm_90_other_kernels=[
                    f.result() for f in [pool.submit(other_case, 90, *spec, True) for spec in other_kernels()]
                ],
            )
            Path(args.report).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
