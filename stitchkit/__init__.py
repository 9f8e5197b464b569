"""stitchkit: compare, combine and rebuild sparse autoencoders of different widths.

Public API (shapes and units in each docstring; units are defined once in stitchkit.sae):
    SAE, SAELoss, Provenance            the SAE module and its per-feature origin
    load_sae, save_sae                  SAELens-layout directories (atomic writes)
    evaluate, Metrics                   streaming MSE / normalised MSE / L0 / L1 / dead features
    train_sae                           train a relu+L1 or top-k SAE on a batch stream
    make_toy, ToyData                   toy activations with known ground-truth features
    Activations, as_activations         activation streams (tensor, list of batches, callable)
    marginal_delta_mse, path_metrics,   exact MSE changes of insertions, swaps and paths,
    swap_delta, marginal_gram,          computed in one pass over the activations
    active_inactive_mse, activation_similarity
    classify, delta_table, insert,      the stitching experiments (stitchkit.stitch)
    insertion_curve, swap_groups, swap,
    interpolate, greedy_selection, similarity_agreement
    retrain_decoder                     decoder refit with the encoder frozen (Adam or least squares)
    frankenstein                        the iterative assembly over a family of widths
    max_cosine, parent_links,           decoder similarity between SAEs (torch / FAISS / Triton)
    novel_fraction_sweep
    StitchkitError and subclasses       every deliberate error
"""

from .activations import Activations, as_activations
from .errors import (
    InvalidArgumentError,
    NonFiniteError,
    SAEFormatError,
    ShapeError,
    StitchkitError,
    UnsupportedError,
)
from .evaluate import (
    ActiveInactiveMSE,
    MarginalGram,
    Metrics,
    PathMetrics,
    activation_similarity,
    active_inactive_mse,
    evaluate,
    marginal_delta_mse,
    marginal_gram,
    path_metrics,
    swap_delta,
)
from .frankenstein import FrankensteinResult, Stage, frankenstein
from .io import load_sae, save_sae
from .provenance import Provenance
from .retrain import RetrainResult, retrain_decoder
from .sae import SAE, SAELoss
from .similarity import Links, MaxCosine, max_cosine, novel_fraction_sweep, parent_links
from .stitch import (
    Agreement,
    Classification,
    DeltaTable,
    Interpolation,
    Selection,
    SwapGroup,
    classify,
    delta_table,
    greedy_selection,
    insert,
    insertion_curve,
    interpolate,
    similarity_agreement,
    swap,
    swap_groups,
)
from .toy import ToyData, make_toy
from .train import train_sae

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "SAELoss",
    "Provenance",
    "load_sae",
    "save_sae",
    "evaluate",
    "Metrics",
    "train_sae",
    "make_toy",
    "max_cosine",
    "parent_links",
    "novel_fraction_sweep",
    "MaxCosine",
    "Links",
    "ToyData",
    "Activations",
    "as_activations",
    "marginal_delta_mse",
    "path_metrics",
    "PathMetrics",
    "swap_delta",
    "marginal_gram",
    "MarginalGram",
    "active_inactive_mse",
    "ActiveInactiveMSE",
    "activation_similarity",
    "classify",
    "Classification",
    "delta_table",
    "DeltaTable",
    "insert",
    "insertion_curve",
    "swap_groups",
    "SwapGroup",
    "swap",
    "interpolate",
    "Interpolation",
    "greedy_selection",
    "Selection",
    "similarity_agreement",
    "Agreement",
    "retrain_decoder",
    "RetrainResult",
    "frankenstein",
    "FrankensteinResult",
    "Stage",
    "StitchkitError",
    "SAEFormatError",
    "ShapeError",
    "InvalidArgumentError",
    "NonFiniteError",
    "UnsupportedError",
]
