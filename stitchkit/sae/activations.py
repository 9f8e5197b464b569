"""SAE activation functions, one small class each: how it encodes, what the fused kernels need,
whether its features can be stitched exactly, and how it trains.

    relu       f = ReLU(pre). Trained with MSE + l1_coefficient * sum f (the reference work).
    topk       the k largest pre-activations per token kept (then ReLU), the rest zero.
    batchtopk  in training mode the k * n_tokens largest ReLU(pre) over the whole batch; in eval
               mode a JumpReLU with the single learned scalar threshold (SAELens' inference rule).
    jumprelu   f = ReLU(pre) * (pre > threshold), one threshold per feature.

`ACTIVATIONS` maps each name to its class; `make_activation(name, k)` builds one, checked. Adding an
architecture means adding a class here (and, for a new file layout, a format in sae.io).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import InvalidArgumentError, UnsupportedError


class Activation:
    """Base class. Class attributes:
    name                  the activation's name (cfg files, SAE.activation)
    needs_k               whether it takes k (features kept per token)
    threshold_shape       None, "feature" (one per feature, [d_sae]) or "scalar" ([]): the SAE's
                          `threshold` buffer
    saelens_architecture  the `architecture` SAELens writes for it (batchtopk: its inference form)
    trains_with_l1        whether training adds the L1 penalty (relu; the others are sparse by rule)
    fused_loss            whether ops.sae_loss has a fused training loss for it
    """

    name: ClassVar[str]
    needs_k: ClassVar[bool] = False
    threshold_shape: ClassVar[str | None] = None
    saelens_architecture: ClassVar[str]
    trains_with_l1: ClassVar[bool] = False
    fused_loss: ClassVar[bool] = False

    def __init__(self, k: int | None = None):
        if self.needs_k:
            if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
                raise InvalidArgumentError(f"activation {self.name!r} needs an integer k > 0, got k={k!r}")
        elif k is not None:
            raise InvalidArgumentError(f"k is only for topk/batchtopk, not {self.name!r}")
        self.k = k

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})" if self.needs_k else f"{type(self).__name__}()"

    def activate(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        """Features from pre-activations [..., d_sae]."""
        raise NotImplementedError

    def couples_features(self, training: bool) -> bool:
        """Whether a feature's value depends on the other features' pre-activations (then a subset
        of features cannot be computed on its own)."""
        return False

    def activate_columns(self, pre: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
        """Features from the pre-activations [..., m] of some columns, `threshold` their own
        thresholds [m] (or None); only for an activation that does not couple its features."""
        return self.activate(pre, threshold, training=False)

    def kernel_threshold(self, threshold: torch.Tensor | None, d_sae: int) -> torch.Tensor | None:
        """The per-feature cut [d_sae] the fused eval-mode encode applies (None: ReLU's 0)."""
        return None

    def kernel_k(self) -> int | None:
        """k for the fused TopK encode (None: not a TopK encode)."""
        return None

    def stitch_threshold(self, threshold: torch.Tensor | None, d_sae: int) -> torch.Tensor:
        """Per-feature JumpReLU thresholds [d_sae] under which each feature keeps, alone in a
        stitched SAE, exactly its value here (relu: 0). Raises where no such form exists."""
        raise NotImplementedError


class ReLU(Activation):
    name = "relu"
    saelens_architecture = "standard"
    trains_with_l1 = True
    fused_loss = True

    def activate(self, pre, threshold, training):
        return torch.relu(pre)

    def stitch_threshold(self, threshold, d_sae):
        return torch.zeros(d_sae)


class JumpReLU(Activation):
    name = "jumprelu"
    threshold_shape = "feature"
    saelens_architecture = "jumprelu"

    def activate(self, pre, threshold, training):
        return torch.relu(pre) * (pre > threshold)

    def kernel_threshold(self, threshold, d_sae):
        return threshold.expand(d_sae)

    def stitch_threshold(self, threshold, d_sae):
        return threshold.detach().expand(d_sae)


class TopK(Activation):
    name = "topk"
    needs_k = True
    saelens_architecture = "topk"

    def activate(self, pre, threshold, training):
        k = min(self.k, pre.shape[-1])
        top = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def couples_features(self, training):
        return True

    def kernel_k(self):
        return self.k

    def stitch_threshold(self, threshold, d_sae):
        raise UnsupportedError(
            "a topk feature's value depends on the other features of its SAE, so it cannot be "
            "stitched exactly (convert it to jumprelu with per-feature thresholds first)"
        )


class BatchTopK(Activation):
    name = "batchtopk"
    needs_k = True
    threshold_shape = "scalar"
    saelens_architecture = "jumprelu"  # SAELens writes a batchtopk SAE for inference as jumprelu

    def activate(self, pre, threshold, training):
        if not training:
            return torch.relu(pre) * (pre > threshold)
        flat = torch.relu(pre).reshape(-1)
        n_tokens = flat.numel() // max(pre.shape[-1], 1)
        top = flat.topk(min(self.k * n_tokens, flat.numel()))
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(pre.shape)

    def couples_features(self, training):
        return training

    def activate_columns(self, pre, threshold):
        return torch.relu(pre) * (pre > threshold)

    def kernel_threshold(self, threshold, d_sae):
        return threshold.expand(d_sae)

    def stitch_threshold(self, threshold, d_sae):
        return threshold.detach().expand(d_sae)


ACTIVATIONS: dict[str, type[Activation]] = {c.name: c for c in (ReLU, TopK, BatchTopK, JumpReLU)}


def make_activation(name: str, k: int | None = None) -> Activation:
    """The activation called `name`, with k where it takes one (checked)."""
    if name not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name](k)
