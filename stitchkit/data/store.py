"""The on-disk activation store: safetensors shards and a manifest, resumable, streamed."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .. import dist
from ..atomic import RESTART_HINT, atomic_write_json, claim_dir, differences, read_json, shared_mode
from ..errors import CorruptFileError, InvalidArgumentError, RunMismatchError, ShapeError
from .lens import LensSource


class ActivationStore:
    """Activations cached on disk as safetensors shards with a manifest.json (model, hook, dtype,
    d_in, tokens per shard, total tokens, complete). `collect` fills it and resumes a partial one;
    `batches` streams shuffled batches (shards in a seeded random order, rows shuffled within a
    window of shards), holding only `window` shards in memory: data larger than RAM is fine.
    An ActivationStore is also an `acts` argument: each pass streams it in order, unshuffled.

    Opening one checks it against its manifest: complete, not empty, every shard present with
    the size the manifest records, the tokens adding up; reading a shard checks its rows. Each
    shard's SHA-256 is recorded when it is written, so `identity()` names the data cheaply."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise InvalidArgumentError(f"activation store {self.path}: no manifest.json (run collect first)")
        self.manifest = read_json(mf, "the store's manifest")
        if not isinstance(self.manifest, dict):
            raise CorruptFileError(f"activation store {mf}: expected a JSON object")
        for key in ("model", "hook_name", "d_in", "dtype", "shards", "n_tokens"):
            if key not in self.manifest:
                raise CorruptFileError(f"activation store {mf}: field {key!r} is missing")
        self._check()

    def _check(self) -> None:
        mf = self.path / "manifest.json"
        if self.manifest.get("complete") is False:
            raise InvalidArgumentError(
                f"activation store {self.path} is incomplete (its collect was interrupted or failed); "
                "re-run collect to finish it"
            )
        shards = self.manifest["shards"]
        try:
            total = sum(int(sh["n_tokens"]) for sh in shards)
            files = [self.path / sh["file"] for sh in shards]
        except (TypeError, KeyError, ValueError) as e:
            raise CorruptFileError(f"activation store {mf}: a shard entry is malformed ({e})") from e
        if total != self.n_tokens:
            raise CorruptFileError(
                f"activation store {mf}: the shards hold {total} tokens but the manifest says {self.n_tokens}"
            )
        if self.n_tokens == 0:
            raise InvalidArgumentError(f"activation store {self.path} holds no tokens; collect some first")
        for sh, f in zip(shards, files):
            if not f.is_file():
                raise CorruptFileError(f"activation store {self.path}: shard {f.name} is missing")
            if "bytes" in sh and f.stat().st_size != sh["bytes"]:
                raise CorruptFileError(
                    f"activation store shard {f} has {f.stat().st_size} bytes, the manifest "
                    f"recorded {sh['bytes']}: it was changed or truncated"
                )

    def identity(self) -> dict:
        """What names this store's data: model, hook, width, tokens and a digest of every shard's
        content (recorded at collect; hashed once here for a store collected before that)."""
        h = hashlib.sha256()
        for sh in self.manifest["shards"]:
            digest = sh.get("sha256") or _file_sha256(self.path / sh["file"])
            h.update(f"{sh['n_tokens']}:{digest};".encode())
        m = self.manifest
        return dict(model=m["model"], hook_name=m["hook_name"], d_in=self.d_in, n_tokens=self.n_tokens,
                    digest=h.hexdigest()[:16])  # fmt: skip

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
        restart: bool = False,
    ) -> ActivationStore:
        """Run `source` over `texts` until `max_tokens` tokens, writing shards atomically. A store
        already at `path` for the same model, hook, sizes and texts is resumed from its last
        shard; one of another collection is refused (RunMismatchError), or, with `restart`, its
        files are removed first. `path` must be new, empty or a store (stitchkit.atomic).

        Across ranks (stitchkit.dist): rank r takes a contiguous slice of the texts (boundaries on
        text batches, so every text is run in the batch one process would run it in), writes its
        own shards (shard_rRRR_*.safetensors) and its own manifest.rankRRR.json (each resumes
        alone), and rank 0 then merges the rank manifests, in rank order and cut at max_tokens,
        into manifest.json. The store streams the same tokens in the same order as one process's;
        its shard boundaries differ."""
        claim_dir(path, "store", fn="collect", resume=True)
        if restart and dist.is_main():
            discard_store(Path(path))
        dist.barrier()
        if dist.world() > 1:
            return cls._collect_ranked(
                source, texts, Path(path), max_tokens=max_tokens, shard_tokens=shard_tokens, progress=progress
            )
        return cls._collect(
            source, texts, Path(path), max_tokens=max_tokens, shard_tokens=shard_tokens, progress=progress
        )

    @classmethod
    def _collect_ranked(cls, source, texts, path: Path, *, max_tokens, shard_tokens, progress):
        r, w = dist.rank(), dist.world()
        lo, hi = dist.shard(len(texts), source.batch_size)
        others = _OtherRanks(path, w, max_tokens) if progress is not None and r == 0 else None
        with dist.alone():  # this rank's slice, its own shards and manifest
            cls._collect(
                source,
                texts,
                path,
                max_tokens=max_tokens,
                shard_tokens=shard_tokens,
                progress=others.progress(progress) if others else progress,
                span=(lo, hi),
                tag=f"rank{r:03d}",
            )
        if others:
            others.wait()
        dist.barrier()  # every part written; each rank merges them alike, rank 0 writes the merge
        parts = [json.loads((path / f"manifest.rank{i:03d}.json").read_text()) for i in range(w)]
        shards, n = [], 0
        for p in parts:
            for sh in p["shards"]:
                take = min(sh["n_tokens"], max_tokens - n)
                if take <= 0:
                    break
                shards.append(dict(sh, n_tokens=take, rows=sh["n_tokens"]))
                n += take
        if n == 0:
            raise InvalidArgumentError(f"activation store {path}: the texts gave no tokens (0 collected)")
        merged = {k: v for k, v in parts[0].items() if k not in ("shards", "n_tokens", "text_pos", "span")}
        atomic_write_json(
            dict(merged, shards=shards, n_tokens=n, complete=True, world_size=w), path / "manifest.json"
        )
        return cls(path)

    @classmethod
    def _collect(
        cls,
        source: LensSource,
        texts: list[str],
        path: Path,
        *,
        max_tokens: int,
        shard_tokens: int,
        progress: Callable[[int], None] | None,
        span: tuple[int, int] | None = None,
        tag: str | None = None,
    ) -> ActivationStore | None:
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
            texts_sha256=hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16],
        )
        if span is not None:
            want["span"] = list(span)
        mf = path / (f"manifest.{tag}.json" if tag else "manifest.json")
        state = read_json(mf, "the store's manifest") if mf.exists() else None
        found = {k: state.get(k) for k in want} if state is not None else want
        if found != want:
            raise RunMismatchError(
                f"activation store {path} holds another collection: {differences(found, want)}; "
                + RESTART_HINT
            )
        if state is not None and state.get("complete"):
            return cls(path) if tag is None else None
        first, end = span if span is not None else (0, len(texts))
        shards = list(state["shards"]) if state else []
        text_pos = int(state["text_pos"]) if state else first
        n_done = sum(s["n_tokens"] for s in shards)
        buf, n_buf = [], 0

        def flush(final: bool) -> None:
            nonlocal buf, n_buf, n_done
            if n_buf:
                data = torch.cat(buf)
                name = f"shard_{tag + '_' if tag else ''}{len(shards):05d}.safetensors"
                shards.append(_write_shard(path, name, data))
                n_done += len(data)
                buf, n_buf = [], 0
            # A collection that gave no token is never marked complete: a re-run says so again.
            complete = final and (n_done > 0 or tag is not None)
            atomic_write_json(
                dict(want, shards=shards, n_tokens=n_done, text_pos=text_pos, complete=complete), mf
            )

        if progress is not None:
            progress(n_done)
        while n_done + n_buf < max_tokens and text_pos < end:
            chunk = texts[text_pos : min(text_pos + source.batch_size, end)]
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
        if tag is not None:  # one rank's part: rank 0 merges the parts
            return None
        if n_done == 0:
            raise InvalidArgumentError(
                f"activation store {path}: the texts gave no tokens (0 collected); give texts with content"
            )
        return cls(path)

    @classmethod
    def from_tensor(
        cls, x: torch.Tensor, path: str | Path, *, model: str, hook_name: str, shard_tokens: int = 65_536
    ) -> ActivationStore:
        """A complete store at `path` (new or empty) holding the rows of x [n, d_in] in order."""
        path = Path(path)
        if x.dim() != 2 or len(x) == 0:
            raise ShapeError(
                f"ActivationStore.from_tensor: expected a non-empty [n, d_in] tensor, got {tuple(x.shape)}"
            )
        claim_dir(path, "store", fn="ActivationStore.from_tensor")
        shards = []
        for i, lo in enumerate(range(0, len(x), shard_tokens)):
            shards.append(_write_shard(path, f"shard_{i:05d}.safetensors", x[lo : lo + shard_tokens]))
        dtype = str(x.dtype).replace("torch.", "")
        manifest = dict(model=model, hook_name=hook_name, d_in=x.shape[1], dtype=dtype,
                        shard_tokens=shard_tokens, shards=shards, n_tokens=len(x), complete=True)  # fmt: skip
        atomic_write_json(manifest, path / "manifest.json")
        return cls(path)

    def _shard(self, i: int) -> torch.Tensor:
        from safetensors.torch import load_file

        f = self.path / self.manifest["shards"][i]["file"]
        sh = self.manifest["shards"][i]
        want, rows = int(sh["n_tokens"]), int(sh.get("rows", sh["n_tokens"]))
        try:
            x = load_file(str(f))["activations"]
        except Exception as e:
            raise CorruptFileError(f"activation store shard {f} could not be read: {e}") from e
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ShapeError(
                f"activation store shard {f} has shape {tuple(x.shape)}, expected [n, {self.d_in}]"
            )
        if x.shape[0] != rows:
            raise CorruptFileError(
                f"activation store shard {f} holds {x.shape[0]} tokens, its manifest says {rows}: "
                "it was changed or truncated"
            )
        return x[:want]

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


def _write_shard(path: Path, name: str, data: torch.Tensor) -> dict:
    """Write one shard atomically; its manifest entry (rows, bytes and SHA-256 recorded)."""
    from safetensors.torch import save_file

    tmp = path / f".{name}.tmp"
    save_file({"activations": data.contiguous()}, str(tmp))
    shared_mode(tmp)  # safetensors writes 0600
    digest, size = _file_sha256(tmp), tmp.stat().st_size
    tmp.replace(path / name)
    return dict(file=name, n_tokens=len(data), bytes=size, sha256=digest)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:32]


STORE_FILES = ("manifest*.json", "shard_*.safetensors", ".shard_*.tmp")


def discard_store(path: Path) -> None:
    """Remove a store's own files (its manifests and shards), nothing else."""
    for pattern in STORE_FILES:
        for f in path.glob(pattern):
            f.unlink(missing_ok=True)


class _OtherRanks:
    """Rank 0's view of the global progress of a ranked collect: its own tokens plus the tokens
    the other ranks' manifests (manifest.rankRRR.json, rewritten at every shard they write) record,
    read from the shared store at most every `every` seconds, at most max_tokens in all."""

    def __init__(self, path: Path, world: int, max_tokens: int, every: float = 0.5):
        self.files = [path / f"manifest.rank{i:03d}.json" for i in range(1, world)]
        self.max_tokens, self.every = max_tokens, every
        self.read_at, self.state, self.mine, self.report = float("-inf"), [], 0, None

    def _read(self) -> list[tuple[int, bool]]:
        if time.monotonic() - self.read_at >= self.every:
            self.read_at, self.state = time.monotonic(), [_tokens_done(f) for f in self.files]
        return self.state

    def progress(self, report: Callable[[int], None]) -> Callable[[int], None]:
        """A progress callback for rank 0's own collect that reports every rank's tokens."""
        self.report = report

        def mine(n: int) -> None:
            self.mine = n
            self.report(min(self.max_tokens, n + sum(t for t, _ in self._read())))

        return mine

    def wait(self) -> None:
        """Until every other rank's part is complete, keep reporting their progress. A rank that
        stops moving for the collective timeout is left to the barrier after this to fail."""
        last, since = None, time.monotonic()
        while not all(done for _, done in self._read()):
            if self.state != last:
                last, since = self.state, time.monotonic()
                self.report(min(self.max_tokens, self.mine + sum(t for t, _ in self.state)))
            elif time.monotonic() - since > dist.timeout_s():
                return
            time.sleep(self.every)
        self.report(min(self.max_tokens, self.mine + sum(t for t, _ in self.state)))


def _tokens_done(manifest: Path) -> tuple[int, bool]:
    """(tokens written, complete) of one rank's part; (0, False) while it has none (or is being
    replaced)."""
    try:
        m = json.loads(manifest.read_text())
        return int(m["n_tokens"]), bool(m.get("complete"))
    except (OSError, ValueError, KeyError):
        return 0, False
