"""The optional CUDA extension `stitchkit._C`, built from csrc/ by setup.py where nvcc and a CUDA
build of torch exist. Everything here has a Triton or torch path beside it; `available()` says
whether the extension was built, and the dispatchers in ops.codes use it where the GPU
benchmark (bench/kernels_gpu.py) measured it faster.

    sparse_decoder_grad_segmented(idx, val, g, d_sae) -> dW [d_sae, d] fp32   (CUB sort; deterministic)
    coactivation(idx_a, val_a, idx_b, val_b, d_a, d_b) -> C [d_a, d_b] fp32   (atomic adds)
"""

from __future__ import annotations

import torch

try:
    from .. import _C  # type: ignore[attr-defined]
except ImportError:
    _C = None


def available() -> bool:
    return _C is not None


def sparse_decoder_grad_segmented(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    return _C.sparse_decoder_grad_segmented(idx, val, g, d_sae)


def coactivation(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor, d_a: int, d_b: int
) -> torch.Tensor:
    return _C.coactivation(idx_a, val_a, idx_b, val_b, d_a, d_b)
