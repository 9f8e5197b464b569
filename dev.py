#!/usr/bin/env python3
"""Set up and run stitchkit's development tasks with nothing but Python 3.10+.

    python3 dev.py demo [ARGS]   make .venv if needed, install stitchkit[lens], run `stitchkit demo ARGS`
    python3 dev.py test [ARGS]   make .venv if needed, install stitchkit[dev,cuda-build,lens], lint,
                                 compile csrc/ and the fused encode kernel for sm_80/90/100
                                 (compile only, no GPU), check SAE files against the libraries
                                 that write them (scripts/check_peers.py), run the CPU kernel
                                 tests under ISA caps (scripts/check_isa_caps.py), run pytest ARGS

Each command creates (or reuses) the virtual environment .venv in this directory, and installs
with constraints/ci.txt (torch pinned). Set STITCHKIT_VENV to use another environment path.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("STITCHKIT_VENV", ROOT / ".venv"))
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, **kw).returncode


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"stitchkit needs Python 3.10+, this is {sys.version.split()[0]}")
    if not PY.exists() and run(sys.executable, "-m", "venv", VENV):
        sys.exit("could not create the virtual environment")
    stamp = VENV / f".stitchkit-installed{extras}"
    inputs = [ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / "constraints" / "ci.txt"]
    if stamp.exists() and all(p.stat().st_mtime <= stamp.stat().st_mtime for p in inputs):
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if run(*pip, "-c", "constraints/ci.txt", "-e", f".{extras}"):
        sys.exit("pip install failed")
    stamp.touch()


def main(argv):
    if not argv or argv[0] not in ("demo", "test"):
        sys.exit(__doc__)
    task, rest = argv[0], argv[1:]
    if task == "demo":
        ensure_env("[lens]")
        return run(PY, "-m", "stitchkit", "demo", *rest)
    ensure_env("[dev,cuda-build,lens]")
    if run(PY, "-m", "ruff", "check", "stitchkit", "tests", "bench", "scripts", "dev.py", "setup.py"):
        return 1
    if run(PY, "scripts/check_csrc.py"):
        return 1
    if run(PY, "scripts/check_triton_compile.py"):
        return 1
    if run(PY, "scripts/check_peers.py"):
        return 1
    if run(PY, "scripts/check_isa_caps.py"):  # the CPU kernel tests as an AVX2 / AVX-512 CPU runs them
        return 1
    return run(PY, "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
