"""The one dispatch rule of floor 0: a CUDA tensor with Triton available runs the Triton kernel;
anything else runs the torch reference. TRITON_INTERPRET=1 makes Triton run on CPU tensors
(slowly), which is how CI tests the kernels. Also: how much memory a chunk may take."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can take tensors on `device` here."""
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def use_kernels(device: torch.device) -> bool:
    """Whether the SAE, evaluation and training code should take the Triton paths on `device`:
    CUDA tensors with Triton installed, unless STITCHKIT_KERNELS=0. (The interpreter is for testing
    the kernels themselves; the library does not route CPU work through it.)"""
    return device.type == "cuda" and triton_installed() and os.environ.get("STITCHKIT_KERNELS", "1") != "0"


def use_cpu_fast_paths(device: torch.device) -> bool:
    """Whether the SAE, evaluation and training code should take their CPU routes over sparse
    features (f's nonzeros: sparse_codes.nonzeros_cpu) on `device`: CPU tensors, unless
    STITCHKIT_KERNELS=0 (then the plain torch paths run, as on a GPU)."""
    return device.type == "cpu" and os.environ.get("STITCHKIT_KERNELS", "1") != "0"


def memory_budget(device: torch.device, fraction: float = 0.25) -> int:
    """Bytes a temporary buffer on `device` may take: `fraction` of free memory, capped at 2 GiB
    on a GPU (larger matmuls gain nothing there) and 256 MiB on the CPU (BLAS is at full rate
    long before that, and a laptop's memory is shared)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = 2 << 30
    else:
        free = _available_host_memory()
        cap = 256 << 20
    return max(1 << 20, min(int(free * fraction), cap))


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
