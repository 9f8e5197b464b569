"""The on-disk activation store: safetensors shards and a manifest, resumable, streamed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..errors import InvalidArgumentError, ShapeError
from .lens import LensSource


class ActivationStore:
    """Activations cached on disk as safetensors shards with a manifest.json (model, hook, dtype,
    d_in, tokens per shard, total tokens, complete). `collect` fills it and resumes a partial one;
    `batches` streams shuffled batches (shards in a seeded random order, rows shuffled within a
    window of shards), holding only `window` shards in memory: data larger than RAM is fine.
    An ActivationStore is also an `acts` argument: each pass streams it in order, unshuffled."""

    def __init__(self, path: str | Path):

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

        from safetensors.torch import save_file

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
