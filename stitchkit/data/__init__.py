"""Where activations come from: streams (tensors, lists, callables), the on-disk store (with each
row's context: token, text, position), a TransformerLens model at a hook, text corpora, and toy data
with known ground truth."""

from .corpora import builtin_corpus, hf_dataset_texts, read_text_files
from .lens import (
    DEFAULT_HOOK,
    Contexts,
    LensSource,
    default_model_dir,
    default_model_dir_or_none,
    token_strings,
)
from .store import ActivationStore, Window
from .streams import Activations, ActsLike, as_activations
from .toy import ToyData, make_toy, toy_contexts

__all__ = [
    "DEFAULT_HOOK",
    "ActivationStore",
    "Activations",
    "ActsLike",
    "Contexts",
    "LensSource",
    "ToyData",
    "Window",
    "as_activations",
    "builtin_corpus",
    "default_model_dir",
    "default_model_dir_or_none",
    "hf_dataset_texts",
    "make_toy",
    "read_text_files",
    "token_strings",
    "toy_contexts",
]
