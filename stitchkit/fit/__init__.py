"""Fitting SAEs: training (train.py), refitting a decoder with the encoder frozen (retrain.py), and
the one checkpoint scheme both and the Frankenstein assembly use (checkpoint.py)."""

from .checkpoint import RunDir, StateFile
from .retrain import METHODS, RetrainResult, retrain_decoder
from .train import TrainLog, activation_scale, train_family, train_sae, unfold_scale

__all__ = [
    "METHODS",
    "RetrainResult",
    "RunDir",
    "StateFile",
    "TrainLog",
    "activation_scale",
    "retrain_decoder",
    "train_family",
    "train_sae",
    "unfold_scale",
]
