"""The on-disk activation store: safetensors shards and a manifest, resumable, streamed; each
row's context (the token it came from) beside it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from .. import dist
from ..atomic import RESTART_HINT, atomic_write_json, claim_dir, differences, read_json, shared_mode
from ..errors import CorruptFileError, InvalidArgumentError, RunMismatchError, ShapeError
from .lens import Contexts, LensSource

# The tensors of a shard beside "activations" when the store records contexts, with their dtypes.
CONTEXT_DTYPES = dict(token_ids=torch.int32, text_index=torch.int64, position=torch.int32)
RECOLLECT_HINT = (
    "recollect it to record them (stitchkit collect ... --restart, or ActivationStore.collect(..., "
    "restart=True); a store made by from_tensor: pass contexts=)"
)


class Window(NamedTuple):
    """The tokens around one row of a store, all from that row's text.

    rows:      int64 [w], the global rows of the window's tokens, consecutive.
    token_ids: int32 [w], their token ids (a store's `tokenizer` names them: token_strings).
    mark:      the index of the row the window was asked for, inside the window.
    """

    rows: torch.Tensor
    token_ids: torch.Tensor
    mark: int


class ActivationStore:
    """Activations cached on disk as safetensors shards with a manifest.json (model, hook, dtype,
    d_in, tokens per shard, total tokens, complete). `collect` fills it and resumes a partial one;
    `batches` streams shuffled batches (shards in a seeded random order, rows shuffled within a
    window of shards), holding only `window` shards in memory: data larger than RAM is fine.
    An ActivationStore is also an `acts` argument: each pass streams it in order, unshuffled.

    Opening one checks it against its manifest: complete, not empty, every shard present with
    the size the manifest records, the tokens adding up; reading a shard checks its rows. Each
    shard's SHA-256 is recorded when it is written, so `identity()` names the data cheaply.

    Contexts: a store collected from texts records, per row, the token it came from (Contexts:
    token id, the index of its text in the texts given to collect, its position in that text) in
    each shard beside the activations, and the tokenizer's name in the manifest (`tokenizer`), so
    `contexts(rows)` and `window(row)` map rows back to text. A text's tokens are consecutive
    rows, in order: collect runs whole texts, a batch at a time, and writes their tokens text by
    text. Stores written before contexts were recorded stream as ever; `has_contexts` is False."""

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

    @property
    def has_contexts(self) -> bool:
        """Whether each row's context is recorded (stores collected before that have none)."""
        return self.manifest.get("contexts") is True

    @property
    def tokenizer(self) -> str | None:
        """The name of the tokenizer of the token ids (for token_strings), where one is recorded."""
        return self.manifest.get("tokenizer")

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
        into manifest.json. The store streams the same tokens in the same order as one process's,
        with the same contexts (text_index counts in the whole `texts`); its shard boundaries differ.
        A complete store collected before contexts were recorded is reused as it is (without
        them); a partial one is refused (RunMismatchError), since its shards have none."""
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
        merged["contexts"] = all(p.get("contexts") is True for p in parts)
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
        if state is not None and state.get("contexts") is not True:
            raise RunMismatchError(
                f"activation store {path} is a partial collection begun before contexts were "
                "recorded (its shards have none); " + RESTART_HINT
            )
        recorded = dict(want, contexts=True, tokenizer=source.tokenizer_name)
        first, end = span if span is not None else (0, len(texts))
        shards = list(state["shards"]) if state else []
        text_pos = int(state["text_pos"]) if state else first
        n_done = sum(s["n_tokens"] for s in shards)
        buf, ctx_buf, n_buf = [], [], 0

        def flush(final: bool) -> None:
            nonlocal buf, ctx_buf, n_buf, n_done
            if n_buf:
                data = torch.cat(buf)
                ctx = Contexts(*(torch.cat(c) for c in zip(*ctx_buf)))
                name = f"shard_{tag + '_' if tag else ''}{len(shards):05d}.safetensors"
                shards.append(_write_shard(path, name, data, ctx))
                n_done += len(data)
                buf, ctx_buf, n_buf = [], [], 0
            # A collection that gave no token is never marked complete: a re-run says so again.
            complete = final and (n_done > 0 or tag is not None)
            atomic_write_json(
                dict(recorded, shards=shards, n_tokens=n_done, text_pos=text_pos, complete=complete), mf
            )

        if progress is not None:
            progress(n_done)
        while n_done + n_buf < max_tokens and text_pos < end:
            chunk = texts[text_pos : min(text_pos + source.batch_size, end)]
            for acts, ctx in source.activations_and_contexts(chunk):
                k = max(0, max_tokens - n_done - n_buf)
                buf.append(acts[:k])
                # The source counts texts in `chunk`; the store counts them in `texts`.
                ctx_buf.append((ctx.token_ids[:k], ctx.text_index[:k] + text_pos, ctx.position[:k]))
                n_buf += len(buf[-1])
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
        cls,
        x: torch.Tensor,
        path: str | Path,
        *,
        model: str,
        hook_name: str,
        shard_tokens: int = 65_536,
        contexts: Contexts | tuple | None = None,
        tokenizer: str | None = None,
    ) -> ActivationStore:
        """A complete store at `path` (new or empty) holding the rows of x [n, d_in] in order, and
        where given their contexts (token_ids, text_index, position: integer tensors [n], each
        text's rows consecutive and in order, which `window` assumes) with the name of their
        tokenizer (for token_strings; e.g. stitchkit.data.toy's TOY_TOKENIZER)."""
        path = Path(path)
        if x.dim() != 2 or len(x) == 0:
            raise ShapeError(
                f"ActivationStore.from_tensor: expected a non-empty [n, d_in] tensor, got {tuple(x.shape)}"
            )
        ctx = _checked_contexts(contexts, len(x)) if contexts is not None else None
        claim_dir(path, "store", fn="ActivationStore.from_tensor")
        shards = []
        for i, lo in enumerate(range(0, len(x), shard_tokens)):
            part = Contexts(*(t[lo : lo + shard_tokens] for t in ctx)) if ctx is not None else None
            shards.append(_write_shard(path, f"shard_{i:05d}.safetensors", x[lo : lo + shard_tokens], part))
        dtype = str(x.dtype).replace("torch.", "")
        manifest = dict(model=model, hook_name=hook_name, d_in=x.shape[1], dtype=dtype,
                        shard_tokens=shard_tokens, shards=shards, n_tokens=len(x), complete=True)  # fmt: skip
        if ctx is not None:
            manifest.update(contexts=True, tokenizer=tokenizer)
        atomic_write_json(manifest, path / "manifest.json")
        return cls(path)

    def _shard(self, i: int) -> torch.Tensor:
        """Shard i's activations (its first n_tokens rows), its contexts checked where recorded."""
        from safetensors.torch import load_file

        f, rows, want = self._shard_file(i)
        try:
            tensors = load_file(str(f))
        except Exception as e:
            raise CorruptFileError(f"activation store shard {f} could not be read: {e}") from e
        if "activations" not in tensors:
            raise CorruptFileError(f"activation store shard {f} has no tensor 'activations'")
        x = tensors["activations"]
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ShapeError(
                f"activation store shard {f} has shape {tuple(x.shape)}, expected [n, {self.d_in}]"
            )
        if x.shape[0] != rows:
            raise CorruptFileError(
                f"activation store shard {f} holds {x.shape[0]} tokens, its manifest says {rows}: "
                "it was changed or truncated"
            )
        if self.has_contexts:
            _check_shard_contexts(f, tensors, rows)
        return x[:want]

    def _shard_file(self, i: int) -> tuple[Path, int, int]:
        """(file, rows written, rows the store uses: the first ones) of shard i."""
        sh = self.manifest["shards"][i]
        return self.path / sh["file"], int(sh.get("rows", sh["n_tokens"])), int(sh["n_tokens"])

    def _shard_contexts(self, i: int) -> Contexts:
        """Shard i's contexts (its first n_tokens rows), read without its activations."""
        from safetensors import safe_open

        f, rows, want = self._shard_file(i)
        try:
            with safe_open(str(f), framework="pt") as fh:
                names = set(fh.keys())
                tensors = {k: fh.get_tensor(k) for k in CONTEXT_DTYPES if k in names}
        except Exception as e:
            raise CorruptFileError(f"activation store shard {f} could not be read: {e}") from e
        _check_shard_contexts(f, tensors, rows)
        return Contexts(*(tensors[k][:want] for k in CONTEXT_DTYPES))

    def contexts(self, rows) -> Contexts:
        """The contexts of `rows` (int64 [m], global row indices in the store's unshuffled order,
        that of `batches(shuffle=False)`): Contexts, each [m], in the order of `rows`. Reads only
        the shards holding those rows, each once, without their activations."""
        self._need_contexts("contexts")
        rows = self._checked_rows(rows, "contexts")
        sizes = torch.tensor([int(sh["n_tokens"]) for sh in self.manifest["shards"]])
        ends = sizes.cumsum(0)
        shard_of = torch.searchsorted(ends, rows, right=True)
        out = Contexts(*(torch.empty(len(rows), dtype=dt) for dt in CONTEXT_DTYPES.values()))
        for i in shard_of.unique().tolist():
            at = (shard_of == i).nonzero().flatten()
            ctx = self._shard_contexts(i)
            local = rows[at] - (ends[i] - sizes[i])
            for dst, src in zip(out, ctx):
                dst[at] = src[local]
        return out

    def window(self, row: int, before: int = 8, after: int = 4) -> Window:
        """The tokens around `row` (a global row, as in `contexts`): up to `before` tokens before it
        and `after` after it, cut at the ends of its text (a text's tokens are consecutive rows)."""
        return self.windows(torch.as_tensor(row).reshape(1), before, after)[0]

    def windows(self, rows, before: int = 8, after: int = 4) -> list[Window]:
        """`window` of each of `rows` (int64 [m]), reading each shard involved once."""
        self._need_contexts("windows")
        if before < 0 or after < 0:
            raise InvalidArgumentError(
                f"ActivationStore.windows: before and after must be >= 0, got {before}, {after}"
            )
        rows = self._checked_rows(rows, "windows")
        span = rows[:, None] + torch.arange(-before, after + 1)  # [m, before + 1 + after]
        inside = (span >= 0) & (span < self.n_tokens)
        need = span[inside].unique()  # sorted
        text = self.contexts(need)
        at = torch.searchsorted(need, span.clamp(0, self.n_tokens - 1))
        texts, ids = text.text_index[at], text.token_ids[at]
        same = inside & (texts == texts[:, before : before + 1])
        # The run of the row's own text around it: stop at the first token of another text.
        left = same[:, :before].flip(1).long().cumprod(1).flip(1).bool()
        right = same[:, before + 1 :].long().cumprod(1).bool()
        keep = torch.cat([left, torch.ones(len(rows), 1, dtype=torch.bool), right], 1)
        return [Window(span[i][keep[i]], ids[i][keep[i]], int(left[i].sum())) for i in range(len(rows))]

    def _need_contexts(self, fn: str) -> None:
        if not self.has_contexts:
            raise InvalidArgumentError(
                f"ActivationStore.{fn}: activation store {self.path} was collected before contexts "
                f"(each row's token) were recorded; " + RECOLLECT_HINT
            )

    def _checked_rows(self, rows, fn: str) -> torch.Tensor:
        rows = torch.as_tensor(rows)
        if rows.numel() == 0:
            rows = rows.long()
        if rows.is_floating_point() or rows.is_complex() or rows.dtype == torch.bool or rows.dim() > 1:
            raise InvalidArgumentError(
                f"ActivationStore.{fn}: rows must be integer row indices [m], got {rows.dtype} "
                f"{tuple(rows.shape)}"
            )
        rows = rows.reshape(-1).long().cpu()
        bad = (rows < 0) | (rows >= self.n_tokens)
        if bad.any():
            raise InvalidArgumentError(
                f"ActivationStore.{fn}: row {int(rows[bad][0])} is outside activation store "
                f"{self.path}, whose rows are 0..{self.n_tokens - 1}"
            )
        return rows

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


def _checked_contexts(contexts, n: int) -> Contexts:
    """Contexts given to from_tensor, in the store's dtypes, each checked to be integer [n]."""
    if not isinstance(contexts, tuple) or len(contexts) != 3:
        raise InvalidArgumentError(
            "ActivationStore.from_tensor: contexts must be (token_ids, text_index, position), "
            f"got {type(contexts).__name__}"
        )
    out = []
    for (name, dtype), t in zip(CONTEXT_DTYPES.items(), contexts):
        t = torch.as_tensor(t)
        if t.shape != (n,) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ShapeError(
                f"ActivationStore.from_tensor: contexts' {name} must be integer [{n}] (one per row), "
                f"got {t.dtype} {tuple(t.shape)}"
            )
        out.append(t.to("cpu", dtype))
    return Contexts(*out)


def _check_shard_contexts(f: Path, tensors: dict, rows: int) -> None:
    """A shard's context tensors are there, in their dtypes, one entry per row it holds."""
    for name, dtype in CONTEXT_DTYPES.items():
        t = tensors.get(name)
        if t is None:
            raise CorruptFileError(
                f"activation store shard {f} has no tensor {name!r}, which its store's manifest records"
            )
        if t.dtype != dtype or t.shape != (rows,):
            raise CorruptFileError(
                f"activation store shard {f}: {name} is {t.dtype} {tuple(t.shape)}, expected "
                f"{dtype} [{rows}] (one per row): it was changed or truncated"
            )


def _write_shard(path: Path, name: str, data: torch.Tensor, contexts: Contexts | None = None) -> dict:
    """Write one shard atomically (its activations and, where given, their contexts); its manifest
    entry (rows, bytes and SHA-256 recorded)."""
    from safetensors.torch import save_file

    tmp = path / f".{name}.tmp"
    tensors = {"activations": data.contiguous()}
    if contexts is not None:
        tensors.update((k, t.contiguous()) for k, t in zip(CONTEXT_DTYPES, contexts))
    save_file(tensors, str(tmp))
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
