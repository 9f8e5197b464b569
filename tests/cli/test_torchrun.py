"""The command line under torchrun (gloo, 2 processes): the single-process outputs, only rank 0
printing and writing, and a rank killed mid-run: every rank exits non-zero in bounded time, and
re-running the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stitchkit import load_sae, save_sae
from stitchkit.cli import main
from tests.helpers import random_sae

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")


def torchrun(*argv, n=2, env=None, **kw):
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(n), "-m", "stitchkit", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STITCHKIT_DIST_TIMEOUT": "60", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    small = random_sae("relu", d_in=32, d_sae=48, seed=1, hook_name="blocks.1.hook_resid_pre")
    large = random_sae("relu", d_in=32, d_sae=200, seed=2, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        large.W_dec[:30] = small.W_dec[:30] + 0.2 * torch.randn(
            30, 32, generator=torch.Generator().manual_seed(5)
        )
    return save_sae(small, d / "small"), save_sae(large, d / "large")


@pytest.fixture(scope="module")
def store(tiny_dir, tmp_path_factory):
    from tests.helpers import TEXTS

    d = tmp_path_factory.mktemp("store")
    text = d / "texts.txt"
    text.write_text("\n\n".join(TEXTS * 6))
    hook = "blocks.1.hook_resid_pre"
    argv = [
        "collect",
        "--model",
        tiny_dir,
        "--hook",
        hook,
        "--texts",
        text,
        "--tokens",
        "900",
        "--context",
        "16",
    ]
    assert main([*map(str, argv), "--out", str(d / "acts")]) == 0
    return d / "acts"


def test_compare_and_interpolate_equal_one_process(pair, store, tmp_path, capsys):
    small, large = pair
    argv = ["compare", large, small, "--backend", "torch", "--out", tmp_path / "one.pt"]
    assert main([str(a) for a in argv]) == 0
    argv = ["interpolate", small, large, "--acts", store, "--tokens", "600", "--out", tmp_path / "one.json"]
    assert main([str(a) for a in argv]) == 0
    one_out = capsys.readouterr().out
    r = torchrun("compare", large, small, "--backend", "torch", "--out", tmp_path / "two.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    r2 = torchrun(
        "interpolate", small, large, "--acts", store, "--tokens", "600", "--out", tmp_path / "two.json"
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert torch.equal(a["max_cos"], b["max_cos"]) and torch.equal(a["argmax"], b["argmax"])
    assert b["distributed"]["world_size"] == 2 and a["distributed"]["world_size"] == 1
    assert sum(w["query_rows"] for w in b["distributed"]["work_per_rank"]) == 200
    ja, jb = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    for ra, rb in zip(ja["interpolation"], jb["interpolation"]):
        for key in ("mse", "l0", "n_features"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9)
    assert jb["target"]["mse"] == pytest.approx(ja["target"]["mse"], rel=1e-9)
    shares = [w.get("tokens", 0) for w in jb["distributed"]["work_per_rank"]]
    # two passes (the path, then the target SAE itself) of one 4,096-token batch: one rank's chunk
    assert len(shares) == 2 and sum(shares) == 2 * 600
    assert r2.stdout.count("n_features") <= one_out.count("n_features")  # printed once, by rank 0


def test_compare_with_key_shards_equals_one_process(pair, tmp_path):
    small, large = pair
    argv = ["compare", large, small, "--backend", "cpu", "--out", tmp_path / "one.pt"]
    assert main([str(a) for a in argv]) == 0
    r = torchrun(*argv[:-1], tmp_path / "two.pt", env={"STITCHKIT_KEY_SHARDS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert torch.equal(a["max_cos"], b["max_cos"]) and torch.equal(a["argmax"], b["argmax"])
    work = b["distributed"]["work_per_rank"]  # a 1 x 2 grid: all 200 queries, half the 48 keys each
    assert [w["query_rows"] for w in work] == [200, 200] and [w["key_rows"] for w in work] == [24, 24]
    bad = torchrun(*argv[:-1], tmp_path / "bad.pt", env={"STITCHKIT_KEY_SHARDS": "3"})
    # Each rank checks and exits 2 with its one line; torchrun exits 1 and lists the ranks that
    # exited 2 (a rank still starting when the first fails is stopped by torchrun instead).
    assert bad.returncode != 0 and bad.stderr.count("exitcode  : 2") >= 1
    assert "stitchkit/cli/" not in bad.stderr  # no traceback through stitchkit (torchrun prints its own)
    assert "error: rank 0 of 2: key_shards (STITCHKIT_KEY_SHARDS) = 3: expected a divisor" in bad.stderr


def test_frankenstein_equals_one_process_and_records_its_split(store, tmp_path):
    # Narrow SAEs, so the refit's normal equations (at most 36 features, 900 tokens) are well
    # conditioned and the float64 sums' order shows at 1e-9 in the solution too.
    hook = "blocks.1.hook_resid_pre"
    small, large = (
        save_sae(random_sae("relu", d_in=32, d_sae=w, seed=w, hook_name=hook), tmp_path / f"sae-{w}")
        for w in (12, 24)
    )
    argv = ["frankenstein", small, large, "--acts", store, "--retrain", "lstsq", "--train-tokens", "900",
            "--eval-tokens", "600", "--batch-size", "100"]  # fmt: skip
    assert main([*map(str, argv), "--out", str(tmp_path / "one")]) == 0
    r = torchrun(*argv, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "frankenstein.json").read_text()) for d in ("one", "two"))
    assert [s["n_features"] for s in a["stages"]] == [s["n_features"] for s in b["stages"]]
    for sa, sb in zip(a["stages"], b["stages"]):
        for key in ("mse", "mse_before", "l0"):
            assert sb[key] == pytest.approx(sa[key], rel=1e-9)
    assert a["distributed"]["world_size"] == 1 and b["distributed"]["world_size"] == 2
    shares = [w.get("tokens", 0) for w in b["distributed"]["work_per_rank"]]
    assert all(t > 0 for t in shares)  # nine 100-token batches of the refit: both ranks took some


def test_a_killed_rank_fails_the_job_and_a_rerun_resumes(store, tmp_path):
    out = tmp_path / "saes"
    argv = [
        "train",
        "--acts",
        store,
        "--widths",
        "16",
        "64",
        "--steps",
        "1000",  # checkpoints every 500: the kill lands in the second width's last 500 steps
        "--batch-size",
        "50",
        "--out",
        out,
    ]
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "stitchkit", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STITCHKIT_DIST_TIMEOUT": "60"}
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    victim, t0 = None, time.time()
    while victim is None and time.time() - t0 < 300 and job.poll() is None:  # rank 1, once the first
        time.sleep(0.2)  # width is saved (a loaded machine makes gloo's many small steps slow)
        if (out / "sae-16" / "cfg.json").exists() and (out / ".sae-64.train.pt").exists():
            victim = _rank_pid(job.pid, 1)
    assert victim is not None, (
        f"the job never reached the second width's first checkpoint (exit {job.poll()}, "
        f"{time.time() - t0:.0f} s)"
    )
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time()
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and time.time() - t_kill < 90
    assert "rank" in err and ("1 (local_rank: 1)" in err or "rank: 1" in err), err[-3000:]
    saved = (out / "sae-16" / "sae_weights.safetensors").stat().st_mtime
    r = torchrun(*argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "sae-16" / "sae_weights.safetensors").stat().st_mtime == saved  # not retrained
    assert load_sae(out / "sae-64").d_sae == 64
    record = json.loads((out / "train.json").read_text())
    assert [row["width"] for row in record["family"]] == [16, 64] and record["parallel"] == "batch"
    assert record["distributed"]["world_size"] == 2
    assert all(w["tokens"] > 0 for w in record["distributed"]["work_per_rank"])


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank under `parent`."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            stat = (p / "stat").read_text().split()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env) and int(stat[3]) != 0:
            if _descends(int(p.name), parent):
                return int(p.name)
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().split()[3])
        except OSError:
            return False
    return False
