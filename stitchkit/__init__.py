"""stitchkit: compare, combine and rebuild sparse autoencoders of different widths.

Public API (shapes and units in each docstring; units are defined once in stitchkit.sae.model):
    SAE, SAELoss, Provenance            the SAE module and its per-feature origin
    load_sae, save_sae                  every public SAE source in (paths, hf://, saelens:), the
                                        SAELens layout out (atomic writes); normalize_input
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
    nearest_features, novel_fraction_sweep
    run_study, StudyConfig, StudyResult the whole study in one call (stitchkit.study), one pass
                                        over the held-out tokens
    feature_cards                       every feature of a study as a card (stitchkit.cards);
                                        report_html.write_report_html draws them
    StitchkitError and subclasses       every deliberate error

The package, floor by floor (docs/design.md): ops/ (tensors: kernels, references, dispatch), sae/
(the SAE, its activations, files, provenance), data/ (activation streams and sources), measure/
(one-pass accumulators), stitch/ (the experiments), fit/ (training, retraining, checkpoints),
study.py, then report.py and cli/ (the only code that prints).
"""

import os as _os

# OpenMP threads (torch's and numba's) that spin while they wait take the cores a second busy
# process needs: on the 2-core AMD EPYC, with one other process spinning, training fell to 0.33x
# its quiet rate and max cosine to 0.36x (the fair share is 0.5); waiting passively they keep
# 0.57x and 0.56x, for 0-10% of the quiet rate (bench/results/cpu_under_load_amd_epyc.json).
# It takes effect where stitchkit is imported before torch starts its threads (the CLI always);
# an OMP_WAIT_POLICY the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import study  # noqa: E402
from .cards import feature_cards
from .data.streams import Activations, as_activations
from .data.toy import ToyData, make_toy
from .errors import (
    CorruptFileError,
    InvalidArgumentError,
    NonFiniteError,
    OutputError,
    RunMismatchError,
    SAEFormatError,
    ShapeError,
    StitchkitError,
    UnsupportedError,
)
from .fit.retrain import RetrainResult, retrain_decoder
from .fit.train import train_sae
from .measure import (
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
from .ops.max_cosine import Links, MaxCosine
from .sae import SAE, Provenance, SAELoss, load_sae, normalize_input, save_sae
from .stitch import (
    Agreement,
    Classification,
    DeltaTable,
    FrankensteinResult,
    Interpolation,
    Selection,
    Stage,
    SwapGroup,
    classify,
    delta_table,
    frankenstein,
    greedy_selection,
    insert,
    insertion_curve,
    interpolate,
    max_cosine,
    nearest_features,
    novel_fraction_sweep,
    parent_links,
    similarity_agreement,
    swap,
    swap_groups,
)
from .study import StudyConfig, StudyResult, run_study

__version__ = "0.1.0"

__all__ = [
    "feature_cards",
    "SAE",
    "SAELoss",
    "Provenance",
    "load_sae",
    "normalize_input",
    "save_sae",
    "evaluate",
    "Metrics",
    "train_sae",
    "make_toy",
    "max_cosine",
    "parent_links",
    "nearest_features",
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
    "OutputError",
    "RunMismatchError",
    "CorruptFileError",
    "study",
    "run_study",
    "StudyConfig",
    "StudyResult",
]
