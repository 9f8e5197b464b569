#!/usr/bin/env python3
"""Set up and run stitchkit's development tasks with nothing but Python 3.10+.

    python3 dev.py demo [ARGS]   make .venv if needed, install stitchkit[lens], run `stitchkit demo ARGS`
    python3 dev.py test [ARGS]   make .venv if needed, install stitchkit[dev,cuda-build,lens], lint,
                                 compile csrc/ and the fused encode kernel for sm_80/90/100
                                 (compile only, no GPU), check SAE files against the libraries
                                 that write them (scripts/check_peers.py), run the CPU kernel
                                 tests under ISA caps (scripts/check_isa_caps.py), install Debian's
                                 Chromium for the report page's browser tests if missing (apt-get,
                                 as root), run pytest ARGS

Each command creates (or reuses) the virtual environment .venv in this directory, and installs
with constraints/ci.txt (torch pinned). Set STITCHKIT_VENV to use another environment path.
The browser tests (tests/browser.py) drive /usr/bin/chromium with Playwright (stitchkit[dev]), never
a browser build of Playwright's own; set STITCHKIT_SKIP_BROWSER=1 to skip them (without it a missing
Chromium fails them).
"""

import os
import shutil
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


def ensure_browser() -> None:
    """Debian's Chromium for tests/browser.py: installed with apt-get when missing and this is
    root; otherwise say how, and let the browser tests fail with the same words."""
    if os.environ.get("STITCHKIT_SKIP_BROWSER") == "1":
        print("STITCHKIT_SKIP_BROWSER=1: the report page's browser tests will be skipped", flush=True)
        return
    if Path("/usr/bin/chromium").is_file() or os.environ.get("STITCHKIT_CHROMIUM"):
        return
    how = "install Debian's chromium (apt-get install chromium) or set STITCHKIT_SKIP_BROWSER=1"
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print(f"dev.py: no /usr/bin/chromium and not root to install it: the browser tests will fail; {how}")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run("apt-get", "update", "-q", env=env) or run("apt-get", "install", "-y", "-q", "chromium", env=env):
        print(f"dev.py: apt-get could not install chromium: the browser tests will fail; {how}")


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
    ensure_browser()
    return run(PY, "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
