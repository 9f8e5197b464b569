"""Where activations come from: streams (tensors, lists, callables), the on-disk store, a
TransformerLens model at a hook, text corpora, and toy data with known ground truth."""

from .corpora import builtin_corpus, hf_dataset_texts, read_text_files
from .lens import DEFAULT_HOOK, LensSource, default_model_dir, default_model_dir_or_none
from .store import ActivationStore
from .streams import Activations, ActsLike, as_activations
from .toy import ToyData, make_toy

__all__ = [
    "DEFAULT_HOOK",
    "ActivationStore",
    "Activations",
    "ActsLike",
    "LensSource",
    "ToyData",
    "as_activations",
    "builtin_corpus",
    "default_model_dir",
    "default_model_dir_or_none",
    "hf_dataset_texts",
    "make_toy",
    "read_text_files",
]
