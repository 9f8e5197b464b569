#!/usr/bin/env python3
"""Compile csrc/ without a GPU (compile only, no link), so a syntax or type error in the CUDA
extension fails CI. Uses nvcc from PATH or from the `cuda-build` extra (nvidia-cuda-nvcc on PyPI),
against the installed torch's headers. A CPU build of torch lacks one generated CUDA header
(c10/cuda/impl/cuda_cmake_macros.h); a one-line stand-in is written to a temporary directory.
Exits 0 with a note when no nvcc can be found (e.g. not Linux x86_64).

    python scripts/check_csrc.py [--arch sm_90]
"""

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for base in map(Path, nvidia.__path__):
        for cand in sorted(base.glob("cu*/bin/nvcc")):
            return str(cand)
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args()
    cu = sorted(ROOT.glob("csrc/*.cu"))
    cpp = sorted(ROOT.glob("csrc/*.cpp"))
    if not cu and not cpp:
        print("check_csrc: no sources in csrc/")
        return 0
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_csrc: skipped, no nvcc (install stitchkit[cuda-build] on Linux x86_64)")
        return 0
    from torch.utils.cpp_extension import include_paths

    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        incs = [f"-I{Path(tmp) / 'shim'}"] + [f"-I{p}" for p in include_paths()]
        incs.append(f"-I{sysconfig.get_paths()['include']}")
        flags = ["-std=c++20", "-DTORCH_EXTENSION_NAME=_C", "-w"]
        jobs = [
            [nvcc, "-c", str(f), "-o", f"{tmp}/{f.name}.o", f"-arch={args.arch}", "--expt-relaxed-constexpr"]
            + flags
            + incs
            for f in cu
        ]
        jobs += [["c++", "-fsyntax-only", str(f)] + flags + incs for f in cpp]

        def compile_one(cmd):
            r = subprocess.run(cmd, capture_output=True, text=True)
            return cmd[2], r.returncode, r.stderr

        failed = 0
        with ThreadPoolExecutor(max_workers=2) as pool:
            for src, rc, err in pool.map(compile_one, jobs):
                rel = Path(src).relative_to(ROOT)
                print(f"check_csrc: {rel}: {'ok' if rc == 0 else 'FAILED'}", flush=True)
                if rc:
                    failed += 1
                    print(err[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
