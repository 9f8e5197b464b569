"""The stitching experiments, each on decoder geometry first and measured through stitchkit.measure.

Small and large are two SAEs trained on the same activations (same d_in, same hook). A large
feature is *novel* when its max decoder cosine against the small SAE is <= threshold and a
*reconstruction* feature otherwise (rules.py: the only statement of that rule). Pairs above the
threshold are *parent links* (child in large, parent in small); connected components of the link
graph are *swap groups*. Every SAE built here keeps each feature's provenance.

    rules.py         DEFAULT_THRESHOLD, is_novel, check_threshold, SWEEP_THRESHOLDS
    similarity.py    max_cosine, parent_links, nearest_features, novel_fraction_sweep (decoder geometry)
    classify.py      classify, delta_table, similarity_agreement
    swaps.py         swap_groups, swap
    interpolate.py   insert, insertion_curve, interpolate (paths planned, then measured)
    selection.py     greedy_selection (exact greedy against the cosine rule)
    frankenstein.py  assemble, frankenstein
"""

from .classify import Agreement, Classification, DeltaTable, classify, delta_table, similarity_agreement
from .frankenstein import Assembled, FrankensteinResult, Stage, assemble, frankenstein
from .interpolate import (
    Interpolation,
    insert,
    insertion_curve,
    insertion_steps,
    interpolate,
    interpolation_path,
)
from .rules import DEFAULT_THRESHOLD, SWEEP_THRESHOLDS, check_threshold, is_novel
from .selection import Selection, greedy_selection, select_from_gram
from .similarity import max_cosine, nearest_features, novel_fraction_sweep, parent_links
from .swaps import SwapGroup, swap, swap_groups

__all__ = [
    "DEFAULT_THRESHOLD",
    "SWEEP_THRESHOLDS",
    "Agreement",
    "Assembled",
    "Classification",
    "DeltaTable",
    "FrankensteinResult",
    "Interpolation",
    "Selection",
    "Stage",
    "SwapGroup",
    "assemble",
    "check_threshold",
    "classify",
    "delta_table",
    "frankenstein",
    "greedy_selection",
    "insert",
    "insertion_curve",
    "insertion_steps",
    "interpolate",
    "interpolation_path",
    "is_novel",
    "max_cosine",
    "novel_fraction_sweep",
    "parent_links",
    "nearest_features",
    "select_from_gram",
    "similarity_agreement",
    "swap",
    "swap_groups",
]
