"""The stitching rules, stated once: what makes a feature novel, and the default threshold.

The reference work calls a large-SAE feature *novel* when its max decoder cosine against the small
SAE is <= 0.7 (it carries information the small SAE lacks) and a *reconstruction* feature when it is
> 0.7; a pair above the threshold is a parent link. Its Frankenstein assembly writes "< 0.7" for the
features it adds, which would treat a feature exactly at the threshold differently there. stitchkit
uses the one rule below everywhere (classify, the novel-fraction sweep, interpolation, Frankenstein):
a feature at exactly the threshold is novel, and is added by Frankenstein.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidArgumentError

DEFAULT_THRESHOLD = 0.7
# The thresholds of the novel-fraction sweep: 0.30, 0.35, ..., 0.95.
SWEEP_THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))


def check_threshold(threshold: float, fn: str, *, low: float = 0.0) -> float:
    """`threshold` as a float, or an InvalidArgumentError naming `fn` unless it lies in (low, 1)
    (a stitching threshold: (0, 1); a bare cosine threshold such as parent_links': (-1, 1))."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise InvalidArgumentError(f"{fn}: threshold must lie in ({low:g}, 1), got {threshold!r}")
    if not low < threshold < 1:
        raise InvalidArgumentError(f"{fn}: threshold must lie in ({low:g}, 1), got {threshold!r}")
    return float(threshold)


def is_novel(max_cos: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """bool [F]: max_cos <= threshold. A NaN max cosine (a zero decoder row) is not novel."""
    return max_cos <= threshold


def is_parent_link(cos: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """bool: cos > threshold, the complement of is_novel for a pair's cosine."""
    return cos > threshold
