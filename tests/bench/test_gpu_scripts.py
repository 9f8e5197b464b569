"""The GPU benchmark scripts (bench/kernels_gpu.py, encode_sweep_gpu.py, profile_encode_gpu.py) run
end to end at toy shapes, each timing taken as one call: on the CPU through Triton's interpreter in
CI, so that an error in a script shows here rather than in a GPU session's few calls. The checks
the scripts record (codes against the reference, across compactions and layouts, run to run) must
hold. No time is asserted."""

import json
import sys
from pathlib import Path

import pytest

from stitchkit.ops.dispatch import triton_interpreting

BENCH = Path(__file__).resolve().parents[2] / "bench"


def refused(row: dict, error: str) -> bool:
    """A variant that this Triton cannot compile for the GPU at hand, recorded by the script with
    its reason (Triton 3.9: the "atomic" compaction on sm_80 / sm_90); never in the interpreter."""
    return not triton_interpreting() and bool(row.get(error))


def once(fn, *args, **kwargs) -> float:
    fn()
    return 1.0


@pytest.fixture
def bench_scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import encode_sweep_gpu
    import kernels_gpu
    import profile_encode_gpu

    for name, value in dict(DEVICE="cpu" if triton_interpreting() else "cuda", N=37, D=24, L0=4.0).items():
        monkeypatch.setattr(kernels_gpu, name, value)
    monkeypatch.setattr(kernels_gpu, "bench", once)
    monkeypatch.setattr(encode_sweep_gpu, "do_bench", once)
    monkeypatch.setattr(profile_encode_gpu, "do_bench", once)
    monkeypatch.setattr(profile_encode_gpu, "CALLS", 1)
    return kernels_gpu, encode_sweep_gpu, profile_encode_gpu


def run_main(module, monkeypatch, out: Path, *args: str) -> dict:
    monkeypatch.setattr(sys, "argv", [module.__name__, "--out", str(out), *args])
    module.main()
    return json.loads(out.read_text())


def test_kernels_bench_runs_and_its_checks_hold(bench_scripts, monkeypatch, tmp_path):
    kernels_gpu = bench_scripts[0]
    args = ("--d-sae", "53", "--no-compile", "--topk", "3")
    got = run_main(kernels_gpu, monkeypatch, tmp_path / "k.json", *args)
    (shape,) = got["shapes"]
    assert shape["d_sae"] == 53 and shape["n"] == 37 and 0 < shape["l0_mean"] < 53
    assert shape["forward_check"]["l0_equal_fraction"] == 1.0
    assert shape["forward_check"]["sq_err_max_rel_diff"] < 1e-4
    rows = shape["forward_compactions"]
    assert set(rows) == {
        f"{dtype}_{compact}{layout}"
        for dtype, layouts in (("bf16", ("", "_n_major")), ("fp32", ("",)))
        for layout in layouts
        for compact in ("cumsum", "atomic", "peel")
    }
    for name, r in rows.items():
        assert refused(r, "error") or (r["codes_identical_to_default"] and r["l0_identical_to_default"]), name
    topk = shape["forward_topk"]
    assert topk["check"]["l0_equal_fraction"] == 1.0 and topk["filter_vs_merge"]["codes_identical"]
    assert shape["encode_fp32_variants"]["l0_equal_fraction"] == 1.0
    grad = shape["decoder_grad"]
    assert grad["sorted_run_to_run_identical"] and grad["atomics_vs_sorted_max_abs_diff"] < 1e-5
    assert {"triton_ms", "torch_eager_ms"} <= set(shape["training_step"])


def test_encode_sweep_runs_every_variant(bench_scripts, monkeypatch, tmp_path):
    _, sweep, _ = bench_scripts
    configs = {"fp32": [(32, 16, 16, 4, 3)], "bf16": [(16, 32, 16, 4, 3)]}
    monkeypatch.setattr(sweep, "CONFIGS", configs)
    got = run_main(sweep, monkeypatch, tmp_path / "s.json", "--d-sae", "53")
    assert got["shape"] == [37, 24, 53]
    # Timed variants: the 3 compactions and no codes, for bf16 in both W_enc layouts (the screen
    # needs the codes).
    assert [(r["dtype"], r["precision"], sum(k.endswith("_ms") for k in r)) for r in got["rows"]] == [
        ("bf16", "bf16", 8),
        ("fp32", "tf32x3", 4),
        ("fp32", "tf32", 4),
        ("fp32", "screen", 3),
    ]
    for row in got["rows"]:
        for name in (k for k in row if k.endswith("_ms")):
            assert row[name] == 1.0 or refused(row, name.replace("_ms", "_error")), (name, row)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_encode_profile_runs(bench_scripts, monkeypatch, tmp_path):
    _, _, profile = bench_scripts
    got = run_main(profile, monkeypatch, tmp_path / "p.json", "--profile", "53", "--crossover", "53")
    assert {"bf16_forward_53", "bf16_kernel_codes_no_stats_53", "fp32_forward_53"} <= set(got["profile"])
    (row,) = got["crossover"]
    assert row["d_sae"] == 53 and row["l0_equal_fraction"] == 1.0
