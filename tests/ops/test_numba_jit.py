"""stitchkit.ops.numba_jit: kernel modules compiled once, under an inter-process lock."""

import multiprocessing as mp
import os
import subprocess
import sys
import time
from subprocess import PIPE

from stitchkit.ops import numba_jit


def _hold(path: str, seconds: float) -> None:
    with numba_jit._locked():
        start = time.monotonic()
        time.sleep(seconds)
        with open(path, "a") as fh:
            fh.write(f"{start} {time.monotonic()}\n")


def test_the_lock_lets_one_process_in_at_a_time(tmp_path):
    log = tmp_path / "held.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(log), 0.3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # no two held it at once


def test_processes_that_start_together_on_a_cold_cache_all_load_the_kernels(tmp_path):
    code = (
        "import numpy as np\n"
        "from stitchkit.ops.numba_jit import load\n"
        "k = load('max_cosine.scan_cpu')\n"
        "S = np.array([[1, 5, 3, 5]], np.int16)\n"
        "idx, n = np.zeros((1, 4), np.int64), np.zeros(1, np.int64)\n"
        "k.fixed_scan(S, 3, 4, idx, n)\n"
        "print(n[0], *idx[0, : n[0]])\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=PIPE, stderr=PIPE, env=env) for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-500:] for o in outs]
    assert {o[0].decode().strip() for o in outs} == {"3 1 2 3"}  # keys 1..3 at or above 3
    assert any((tmp_path / "cache").rglob("*.nbc"))  # and the cache was written


def test_load_gives_numba_torchs_thread_count_and_leaves_torchs_alone(tmp_path):
    """In a fresh process (numba's threads not yet started, whose OpenMP start resets torch's
    count): torch.set_num_threads(1), then a kernel module: both run one thread."""
    code = (
        "import numba, torch\n"
        "from stitchkit.ops import numba_jit\n"
        "torch.set_num_threads(1)\n"
        "numba_jit.load('gram.kernels_cpu')\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
        "torch.set_num_threads(2)\n"
        "numba_jit.load('gram.kernels_cpu')\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.split("\n")[:2]
    assert first == "1 1"
    torch_n, numba_n, cap = map(int, second.split())
    assert torch_n == 2 and numba_n == min(2, cap)
