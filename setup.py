"""Build the optional CUDA extension in csrc/ only where it can be built.

A plain `pip install .` never needs a compiler: the extension is built only when torch is a
CUDA build, nvcc is on the PATH, and csrc/ holds .cu sources; a failed build is reported and
skipped, and stitchkit then runs on its Triton and torch paths.
"""

import shutil
import sys
from pathlib import Path

from setuptools import setup


def cuda_extensions():
    sources = sorted(str(p) for p in Path("csrc").glob("*.cu")) + sorted(
        str(p) for p in Path("csrc").glob("*.cpp")
    )
    if not sources or shutil.which("nvcc") is None:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if torch.version.cuda is None:
        return [], {}

    class OptionalBuild(BuildExtension):
        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # the extension is optional: never fail the install for it
                print(f"stitchkit: skipping optional CUDA extension ({e})", file=sys.stderr)

    ext = CUDAExtension("stitchkit._C", sources, extra_compile_args={"nvcc": ["-O3"], "cxx": ["-O3"]})
    return [ext], {"build_ext": OptionalBuild}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
