"""The dense float64 reference of the sparse grams (see stitchkit.ops.gram)."""

from __future__ import annotations

import torch


def gram_reference(f: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """f^T g (f^T f when g is None) in float64, by a dense GEMM."""
    f = f.double()
    return f.T @ (f if g is None else g.double())
