"""The one dispatch rule (stitchkit.ops.dispatch): which route each call takes, how configuration is
passed in, and that the library's SAE code gives the reference's numbers on every route."""

import pytest
import torch

from stitchkit import SAE, evaluate, max_cosine, retrain_decoder, train_sae
from stitchkit.errors import InvalidArgumentError
from stitchkit.ops import dispatch
from stitchkit.ops.dispatch import configure, op_route, sae_route, settings, similarity_backend
from tests.helpers import DEVICE

CPU = torch.device("cpu")


def test_routes_follow_device_dtype_and_mode(monkeypatch):
    monkeypatch.delenv("STITCHKIT_KERNELS", raising=False)
    with configure(interpret=False):
        assert sae_route(CPU, torch.float32) == "cpu"
        assert sae_route(CPU, torch.float64) == "cpu"
        assert sae_route(CPU, torch.bfloat16) == "torch"  # the CPU paths were measured in fp32/fp64
        assert op_route(CPU) == "cpu"
    with configure(kernels=False):
        assert sae_route(CPU, torch.float32) == "torch" and op_route(CPU) == "torch"
        assert similarity_backend("auto", CPU) == "torch"
        assert not dispatch.csrc_available()
    with configure(route="triton"):
        assert sae_route(CPU, torch.float32) == "triton"
        assert sae_route(CPU, torch.float32, eval_mode=False) == "torch"  # fused form not exact there


def test_environment_is_read_at_each_call_and_configure_nests(monkeypatch):
    monkeypatch.setenv("STITCHKIT_KERNELS", "0")
    assert not settings().kernels
    monkeypatch.setenv("STITCHKIT_KERNELS", "1")
    assert settings().kernels
    with configure(topk_method="merge") as outer:
        assert outer.topk_method == "merge"
        with configure(topk_method="filter", csrc=True):
            assert settings().topk_method == "filter" and settings().csrc
        assert settings().topk_method == "merge" and settings().csrc is None
    assert settings().topk_method is None
    with pytest.raises(TypeError, match="unknown settings"):
        with configure(kernel=False):
            pass


def test_similarity_backend_checks_what_is_asked():
    with pytest.raises(InvalidArgumentError, match="backend must be one of"):
        similarity_backend("blas", CPU)
    if not dispatch.faiss_installed():
        with pytest.raises(InvalidArgumentError, match="faiss is not installed"):
            similarity_backend("faiss", CPU)
    assert similarity_backend("torch", CPU) == "torch"


def test_kernels_off_gives_the_reference_max_cosine(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(50, 16, generator=g), torch.randn(40, 16, generator=g)
    fast = max_cosine(q, k)
    monkeypatch.setenv("STITCHKIT_KERNELS", "0")
    ref = max_cosine(q, k)
    torch.testing.assert_close(fast.values, ref.values, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast.indices, ref.indices)


def test_rows_per_chunk_fits_the_budget():
    budget = dispatch.memory_budget(CPU)
    assert dispatch.rows_per_chunk(4 * 1000, CPU) == budget // 4000
    assert dispatch.rows_per_chunk(budget * 10, CPU) == 1


@pytest.mark.parametrize("case", ["relu", "relu-screen", "topk", "topk-merge"])
def test_library_paths_through_kernels_match_the_reference(case):
    """Route the library's SAE code through the Triton paths (interpreted on the CPU in CI), then
    through the plain torch references, and compare."""
    fused_settings = dict(route="triton")
    if case == "relu-screen":  # the fp32 screen as the default route, here under the interpreter
        fused_settings["fp32_encode"] = "screen"
    if case == "topk-merge":
        fused_settings["topk_method"] = "merge"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 12, generator=g).to(DEVICE)
    batches = list(x.split(40))
    relu = not case.startswith("topk")
    if relu:
        sae = SAE(12, 30, l1_coefficient=0.1, name="k", generator=g).to(DEVICE)
        with torch.no_grad():
            sae.b_enc.fill_(-0.3)
    else:
        sae = SAE(12, 40, activation="topk", k=6, name="t", generator=g).to(DEVICE)
    with configure(**fused_settings):
        fused = evaluate(sae, batches)
        if relu:  # the training kernel is the relu SAE's
            trained = train_sae(batches, 12, 30, l1_coefficient=0.1, lr=1e-2, seed=3)
        refit = retrain_decoder(sae, batches, method="adam", lr=1e-2)
    with configure(kernels=False):
        plain = evaluate(sae, batches)
        if relu:
            trained_plain = train_sae(batches, 12, 30, l1_coefficient=0.1, lr=1e-2, seed=3)
        refit_plain = retrain_decoder(sae, batches, method="adam", lr=1e-2)
    assert fused.mse == pytest.approx(plain.mse, rel=1e-5)
    assert fused.l0 == pytest.approx(plain.l0) and fused.l1 == pytest.approx(plain.l1, rel=1e-5)
    assert torch.equal(fused.frequency, plain.frequency)
    if relu:
        torch.testing.assert_close(trained.W_dec, trained_plain.W_dec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(refit.sae.W_dec, refit_plain.sae.W_dec, rtol=1e-4, atol=1e-5)


def test_without_numba_the_cpu_runs_the_torch_reference(tmp_path):
    """stitchkit on the path of an environment without numba (a peer library's venv, as
    scripts/check_peers.py runs it) encodes, trains a step and compares decoders through torch,
    and never imports numba."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None  # `import numba` fails, find_spec("numba") is None
        import torch
        import stitchkit as sk
        from stitchkit.errors import InvalidArgumentError
        from stitchkit.ops.dispatch import op_route, sae_route, similarity_backend
        cpu = torch.device("cpu")
        assert sae_route(cpu, torch.float32) == "torch" and op_route(cpu) == "torch"
        assert similarity_backend("auto", cpu) in ("faiss", "torch")
        try:
            similarity_backend("cpu", cpu)
            raise SystemExit("backend='cpu' accepted without numba")
        except InvalidArgumentError as e:
            assert "numba" in str(e)
        g = torch.Generator().manual_seed(0)
        sae = sk.SAE(24, 96, "relu", generator=g)
        x = torch.randn(300, 24, generator=g)
        f = sae.encode(x)
        ref = torch.relu((x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())
        assert (f.double() - ref).abs().max() < 1e-5
        big = sk.SAE(24, 192, "relu", generator=g)
        got = sk.max_cosine(big.W_dec, sae.W_dec)
        dec = lambda w: torch.nn.functional.normalize(w.double(), dim=1)
        want = (dec(big.W_dec) @ dec(sae.W_dec).T).max(1)
        assert torch.equal(got.indices, want.indices)
        sae.loss(x).total.backward()
        assert sae.W_dec.grad is not None and torch.isfinite(sae.W_dec.grad).all()
        assert "numba" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STITCHKIT_KERNELS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_an_isa_cap_turns_the_bf16_screen_off(monkeypatch):
    """A process capped below bf16 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, as CI's
    capped runs set them) takes the routes a CPU without bf16 units would."""
    import torch

    from stitchkit.ops import dispatch

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(dispatch, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    with dispatch.configure(cpu_bf16=None):  # read from the CPU, not forced
        assert dispatch.cpu_has_bf16() and not dispatch.isa_capped_below_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni")
        assert not dispatch.cpu_has_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
        assert dispatch.cpu_has_bf16()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert not dispatch.cpu_has_bf16()
    with dispatch.configure(cpu_bf16=True):  # an explicit choice still wins
        assert dispatch.cpu_has_bf16()
