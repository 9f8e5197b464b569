"""stitchkit: compare, combine and rebuild sparse autoencoders of different widths.

Public API (shapes and units in each docstring; units are defined once in stitchkit.sae):
    SAE, SAELoss, Provenance            the SAE module and its per-feature origin
    load_sae, save_sae                  SAELens-layout directories (atomic writes)
    evaluate, Metrics                   streaming MSE / normalised MSE / L0 / L1 / dead features
    train_sae                           train a relu+L1 or top-k SAE on a batch stream
    make_toy, ToyData                   toy activations with known ground-truth features
    max_cosine, parent_links,           decoder similarity between SAEs (torch / FAISS / Triton)
    novel_fraction_sweep
    StitchkitError and subclasses       every deliberate error
"""

from .errors import (
    InvalidArgumentError,
    NonFiniteError,
    SAEFormatError,
    ShapeError,
    StitchkitError,
    UnsupportedError,
)
from .evaluate import Metrics, evaluate
from .io import load_sae, save_sae
from .provenance import Provenance
from .sae import SAE, SAELoss
from .similarity import Links, MaxCosine, max_cosine, novel_fraction_sweep, parent_links
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
    "StitchkitError",
    "SAEFormatError",
    "ShapeError",
    "InvalidArgumentError",
    "NonFiniteError",
    "UnsupportedError",
]
