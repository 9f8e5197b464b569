"""The SAE evaluation forward pass in one fused encode and one sparse decode, never writing the
dense [n, d_sae] activation matrix.

    sae_forward(x [n, d_in], W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in],
                threshold [F] | None, apply_b_dec_to_input, k: int | None) -> ForwardStats
        pre = (x - b_dec) W_enc + b_enc (x W_enc + b_enc without the input shift);
        f = ReLU(pre), and with a threshold f = ReLU(pre) * (pre > threshold) (JumpReLU), and
        with k f = ReLU of each token's k largest pre-activations, the rest 0 (TopK);
        x_hat = b_dec + f W_dec. Returns per-token squared error |x - x_hat|^2, L1 = sum f and
        L0 = #(f > 0) [n] (fp32), and the codes: indices [n, c] int32 (ascending, -1 = empty
        slot) and values [n, c] fp32, c = the largest L0 in the batch.

The fused encode computes each [BLOCK_M tokens x BLOCK_N features] tile of pre with tl.dot, applies
the activation in registers, and appends the tile's active (feature, value) pairs to each token's
slot list: a prefix sum over the tile's row gives each hit its place, and one vector atomic add per
tile reserves the places (per-token counters); the other compactions give places by one atomic per
hit, or take each row's hits one row max at a time (encode_sparse_triton's `compact`). When a token
has more hits than slots, the counters still hold the true L0, so those tokens alone are encoded
again with exactly enough slots. Each token's slots are then sorted by feature, so the codes (and
everything decoded from them) do not depend on the order in which tiles finished; L1 and L0 are
summed from them. The decode is `ops.codes.sparse_decode`, which gathers only the active decoder
rows.

TopK couples a token's features, so its encode is row-stationary: one program owns BLOCK_M tokens,
walks all F features in tiles of R >= k and keeps each token's R best (value, feature) pairs in
registers. Each pair is one int64 key (the float's order-preserving bits above the complement of
the feature index), so a single sort merges values and indices, and among equal values the
smaller feature wins. A tile whose best key beats no token's current R-th is skipped. The other
TopK route (encode_topk_filtered) reuses the ReLU encode kernel behind a per-token cut taken from a
sample of features; TOPK_METHOD picks one.

fp32 inputs run the encode as tf32x3 on the GPU (three tf32 tensor-core products, error about
fp32's) and IEEE fp32 in the interpreter; bf16 inputs use bf16 products. Accumulation is fp32.
precision="screen" is the other fp32 route, the default on a GPU from SCREEN_MIN_FEATURES
features up: a bf16 encode emits every feature that the bf16 products' proven error bound
(tiles.bf16_margin) cannot rule out, and sparse_rowdot recomputes those pre-activations in fp32,
which decide activity and give the values. Only a pre-activation within the arithmetic's error
(fp32's, for the screen) of 0 or of the threshold can change its activity.

Files: naive.py (the torch reference), kernels.py (the Triton kernels), triton.py (launchers,
tuning knobs, the compile memo). `sae_forward` dispatches by ops.dispatch.op_route.
"""

from __future__ import annotations

import torch

from ..dispatch import op_route
from .naive import ForwardStats, sae_forward_reference

__all__ = ["ForwardStats", "sae_forward", "sae_forward_reference"]


def sae_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor | None = None,
    apply_b_dec_to_input: bool = True,
    k: int | None = None,
) -> ForwardStats:
    """Dispatch: the fused Triton path on the Triton route, else the reference."""
    args = (x, W_enc, b_enc, W_dec, b_dec, threshold, apply_b_dec_to_input)
    if op_route(x.device) == "triton":
        from .triton import sae_forward_triton

        return sae_forward_triton(*args, k=k)
    return sae_forward_reference(*args, k=k)
