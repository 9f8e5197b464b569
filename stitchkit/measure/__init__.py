"""Measuring SAEs over activation streams (units: see stitchkit.sae.model).

Every one-pass measurement is an accumulator (protocol: measure.accumulator) with a function that
runs it alone:
- metrics.py        `evaluate`: MSE, normalised MSE, L0, L1, dead features of one SAE.
- insertion.py      `marginal_delta_mse`: the exact MSE change of inserting each donor feature alone.
- active_inactive.py `active_inactive_mse`: two SAEs' MSE where each feature is active / inactive.
- paths.py          `path_metrics`: exact metrics after every step of insertions and removals.
- swaps.py          `swap_delta`: the exact dMSE and dL0 of applying each swap group alone.
- gram.py           `marginal_gram`: the quadratic form behind all of these (greedy selection).
- coactivation.py   `activation_similarity`: co-activation cosine between two SAEs' features.
- cards.py          `feature_cards`: each feature's top-k rows, histogram, firing rate, band samples.
- splice.py         `splice_similarity`: the SAE spliced into its model (not a token-stream pass).

`run_pass(accumulators, acts, ...)` streams tokens once through any number of them.
"""

from .accumulator import Accumulator, Batch, measure, run_pass
from .active_inactive import ActiveInactiveAccumulator, ActiveInactiveMSE, active_inactive_mse
from .cards import CardStats, FeatureCards, feature_cards
from .coactivation import CoactivationAccumulator, activation_similarity
from .gram import GramAccumulator, MarginalGram, marginal_gram
from .insertion import InsertionAccumulator, marginal_delta_mse
from .metrics import Metrics, MetricsAccumulator, evaluate
from .paths import PathAccumulator, PathMetrics, Step, path_metrics
from .splice import splice_similarity
from .swaps import SwapAccumulator, swap_delta

__all__ = [
    "Accumulator",
    "ActiveInactiveAccumulator",
    "ActiveInactiveMSE",
    "Batch",
    "CardStats",
    "CoactivationAccumulator",
    "FeatureCards",
    "GramAccumulator",
    "InsertionAccumulator",
    "MarginalGram",
    "Metrics",
    "MetricsAccumulator",
    "PathAccumulator",
    "PathMetrics",
    "Step",
    "SwapAccumulator",
    "activation_similarity",
    "active_inactive_mse",
    "evaluate",
    "feature_cards",
    "marginal_delta_mse",
    "marginal_gram",
    "measure",
    "path_metrics",
    "run_pass",
    "splice_similarity",
    "swap_delta",
]
