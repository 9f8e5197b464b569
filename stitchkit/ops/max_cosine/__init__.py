"""Max inner product and threshold pairs between two row-normalised matrices.

    max_ip(qn [Fq, d], kn [Fk, d]) -> (values [Fq] fp32, indices [Fq] int64)
        values[i] = max_j qn[i] . kn[j], indices[i] = the smallest j attaining it.
    pairs_above(qn, kn, threshold) -> (i [P] int64, j [P] int64, ip [P] fp32)
        every (i, j) with qn[i] . kn[j] > threshold (a float, or fp32 [Fq]: one per query row),
        in no particular order.
    max_ip_screened_triton(qn, kn) -> max_ip in fp32 at about bf16's cost: a bf16 max, then every
        key within bf16's proven error of it (pairs_above with per-row thresholds), then the
        candidates' fp32 row products pick the winner.

Two implementations side by side: naive.py, the torch reference (chunked matmul; memory
O(chunk * Fk)), and triton.py, Triton kernels that never write an Fq x Fk tile to memory:
- `_max_ip_kernel` computes Q K^T tiles with tl.dot and folds each tile into a running
  max/argmax per query row held in registers. The key axis can be split across programs to
  fill the GPU when Fq is small; the splits' partial results are merged on the host.
- `_pairs_kernel` computes one tile per program, compacts the hits of the tile with a
  prefix sum and reserves space in the output with one atomic add per tile. When the buffer
  overflows, the counter still tells how many pairs exist: the caller grows it and retries.

precision: "fp32" (on the GPU tf32x3: three tf32 tensor-core products, error about fp32's; IEEE
fp32 in the interpreter and the torch reference), "tf32" (tensor-core tf32 products), "bf16"
(inputs rounded to bf16). Accumulation is always fp32. Inputs are fp32 [F, d], contiguous rows.
Reduced arithmetic can only change decisions within its error: an argmax among near-ties, a pair
within that error of the threshold.
"""

from typing import NamedTuple

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


class MaxCosine(NamedTuple):
    """values: float32 [Fq], max cosine of each query row over the key rows.
    indices: int64 [Fq], the key row attaining it (the smallest such index on exact ties)."""

    values: torch.Tensor
    indices: torch.Tensor


class Links(NamedTuple):
    """Parent links in COO form, sorted by (child, -cos): child int64 [P] (rows of the large
    SAE), parent int64 [P] (rows of the small SAE), cos float32 [P]."""

    child: torch.Tensor
    parent: torch.Tensor
    cos: torch.Tensor
