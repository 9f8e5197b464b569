#!/usr/bin/env python3
"""The CPU kernel tests under ISA caps: this machine acting as a CPU with fewer instruction sets,
so that a result which depends on the ISA fails here, before a user's machine finds it.

Each cap sets what the libraries honour: torch's kernels (ATEN_CPU_CAPABILITY), oneDNN's
(ONEDNN_MAX_CPU_ISA), numba's code generation (NUMBA_CPU_NAME); stitchkit's dispatch reads the
first two (ops.dispatch.isa_capped_below_bf16), so the bf16 screen is off below AVX-512 BF16, as
it is on such a CPU. A cap above what this CPU has is skipped (it would not cap anything).

    python scripts/check_isa_caps.py [--only avx2] [pytest args...]

Run by `python3 dev.py test` (so by .ci/run) after the uncapped suite's checks;
STITCHKIT_SKIP_ISA_CAPS=1 skips it. Exits 1 if a capped run fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests of every CPU kernel: encode and codes, the training loss, max cosine and links, gram.
TESTS = [
    "tests/ops/test_encode_cpu.py",
    "tests/ops/test_codes.py",
    "tests/ops/test_sae_loss.py",
    "tests/ops/test_max_cosine_cpu.py",
    "tests/ops/test_max_cosine.py",
    "tests/ops/test_gram.py",
    "tests/measure/test_gram.py",
    "tests/ops/test_dispatch.py",
]

# name: (the CPU flags it needs, the environment that caps to it)
CAPS = {
    "avx2": ({"avx2"}, dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", NUMBA_CPU_NAME="haswell")),
    "avx512": (
        {"avx512f", "avx512bw"},
        dict(ATEN_CPU_CAPABILITY="avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE", NUMBA_CPU_NAME="skylake-avx512"),
    ),
    "avx512_bf16": (
        {"avx512f", "avx512_bf16"},
        dict(
            ATEN_CPU_CAPABILITY="avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16", NUMBA_CPU_NAME="cooperlake"
        ),
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(CAPS), action="append")
    args, pytest_args = ap.parse_known_args()
    if os.environ.get("STITCHKIT_SKIP_ISA_CAPS") == "1":
        print("check_isa_caps: skipped (STITCHKIT_SKIP_ISA_CAPS=1)")
        return 0
    from stitchkit.ops.dispatch import cpu_flags

    flags, failed = cpu_flags(), []
    for name in args.only or list(CAPS):
        need, env = CAPS[name]
        if not need <= flags:
            print(f"check_isa_caps: {name}: skipped, this CPU lacks {sorted(need - flags)}")
            continue
        t0 = time.time()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *pytest_args]
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
        tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"check_isa_caps: {name} ({' '.join(f'{k}={v}' for k, v in env.items())}): {tail} "
              f"[{time.time() - t0:.0f} s]", flush=True)  # fmt: skip
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
            failed.append(name)
    print(f"check_isa_caps: {'ok' if not failed else 'FAILED under ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
