"""The SAE: the module (model.py), one class per activation (activations.py), reading and writing
SAE files (io.py: the front door; sources.py: where they come from; formats/: one module per
layout), and each feature's origin (provenance.py). Units are defined in model.py."""

from .activations import ACTIVATIONS, Activation, BatchTopK, JumpReLU, ReLU, TopK, make_activation
from .io import load_sae, save_sae
from .model import SAE, SAELoss, family_order, normalize_input
from .provenance import Provenance

__all__ = [
    "ACTIVATIONS",
    "SAE",
    "Activation",
    "BatchTopK",
    "JumpReLU",
    "Provenance",
    "ReLU",
    "SAELoss",
    "TopK",
    "family_order",
    "load_sae",
    "make_activation",
    "normalize_input",
    "save_sae",
]
