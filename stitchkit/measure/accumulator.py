"""One pass, many accumulators: the protocol every one-pass measurement follows.

An accumulator is one measurement over a stream of tokens. It has
    width            columns of fp32 temporaries per token it needs at once
    reads            (optional) the (sae, features or None) whose values it asks the Batch for,
                     which the Batch keeps for the chunk's lifetime (Batch.row_bytes); chunks are
                     sized so that the widest temporary and everything the Batch keeps fit the
                     memory budget together
    update(batch)    add one chunk of tokens (a `Batch`, whose SAE forwards are shared)
    merge(other)     add the sums of another accumulator of the same kind and arguments that saw
                     other tokens (another chunk of the stream, another device, another rank)
    result()         the finished measurement; raises InvalidArgumentError if no token was seen
    reduce_across_ranks()  (optional) combine every rank's state in place, for state that is not
                     a Sums' float64 sums (see Across ranks)
Sums are float64, so merging only moves rounding; merge(other) then result() is the measurement of
the union of both token sets.

Across ranks (a torch.distributed process group, see stitchkit.dist): run_pass cuts the stream
into the chunks one process would (each batch split by the memory rule), gives chunk j to rank
j % world, and at the end sums every accumulator's state over the ranks (reduce_across_ranks,
float64 all-reduce), so every rank holds the measurement of all tokens. Each chunk's products are
then the single process's own, and only the float64 sums run in another order (1e-9 relative in
the tests); the work balances once the stream has several chunks per rank (4,096-token batches).
An accumulator whose state is not sums (e.g. measure.cards' top-k rows) has a method
`reduce_across_ranks()` of its own, which reduce_across_ranks calls instead.

Each Batch knows its `offset`, the place in the whole stream of its first token (every chunk
counted, other ranks' included), so an accumulator can name tokens by their global row.

`run_pass(accumulators, acts)` streams `acts` once and feeds every chunk to every accumulator. Within
a chunk, `Batch` computes each SAE's forward (dense features, reconstruction, residual) at most once,
however many accumulators read it: the study streams its held-out tokens once through all of its
measurements, and the base SAE's forward is computed once per chunk for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from .. import dist
from ..data.streams import ActsLike, as_activations
from ..errors import InvalidArgumentError, UnsupportedError
from ..ops.dispatch import rows_per_chunk, sae_route
from ..sae.model import SAE, is_every_feature

# Batch.columns: from this fraction of an SAE's features up, its whole features are computed and
# the columns gathered from them, rather than an encoder slice kept for the pass.
SLICE_MAX_FRACTION = 0.5

Progress = Callable[[int], None] | None


@runtime_checkable
class Accumulator(Protocol):
    width: int

    def update(self, batch: Batch) -> None: ...

    def merge(self, other) -> None: ...

    def result(self): ...


class Batch:
    """One chunk of tokens, with the SAE computations on it cached for the chunk's lifetime.

    x: the tokens [n, d_in] as streamed (on the pass's device). offset: the index in the whole
    stream of x's first token (run_pass counts every chunk, other ranks' too; 0 for a Batch made
    alone). Each method computes on the SAE's own device and dtype, once per SAE per chunk.
    """

    def __init__(self, x: torch.Tensor, offset: int = 0):
        self.x = x
        self.offset = int(offset)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _get(self, key: tuple, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def on(self, device: torch.device) -> torch.Tensor:
        """x on `device`."""
        return self._get(("x", str(device)), lambda: self.x.to(device))

    def _get_for(self, sae: SAE, key: tuple, make: Callable[[], object]):
        if sae.input_norm != "none":
            raise UnsupportedError(
                f"SAE {sae.name!r} states input_norm={sae.input_norm!r}: it reads each token "
                "normalised, so measure it on activations normalised with "
                "stitchkit.sae.model.normalize_input(x, sae.input_norm), as sae.in_normalized_space()"
            )
        return self._get(key, make)

    def features(self, sae: SAE) -> torch.Tensor:
        """sae.encode(x): dense features [n, d_sae] on sae's device (from the codes when they were
        asked for first)."""

        def make():
            nz = self._cache.get(("nz", id(sae)))
            if nz is not None:
                from ..ops.codes.cpu import dense_from_nonzeros

                return dense_from_nonzeros(nz, sae.d_sae)
            return sae.encode(self.on(sae.device))

        return self._get_for(sae, ("f", id(sae)), make)

    def codes(self, sae: SAE):
        """The nonzeros of sae's features (ops.codes.cpu.Nonzeros) on the CPU route: from the CPU
        screen (SAE.codes) without the dense features, or from the dense features when they are
        at hand or the screen does not apply; None off the CPU route or where f is too dense."""

        def make():
            from ..ops.codes.cpu import nonzeros_cpu

            if sae_route(sae.device, sae.dtype, eval_mode=not sae.training) != "cpu":
                return None
            cached = self._cache.get(("f", id(sae)))
            nz = sae.codes(self.on(sae.device)) if cached is None else None
            return nz if nz is not None else nonzeros_cpu(self.features(sae))

        return self._get_for(sae, ("nz", id(sae)), make)

    def reconstruction(self, sae: SAE) -> torch.Tensor:
        """sae(x) = decode(encode(x)) [n, d_in]."""
        return self._get_for(sae, ("x_hat", id(sae)), lambda: sae.decode(self.features(sae)))

    def residual(self, sae: SAE) -> torch.Tensor:
        """x - sae(x) in sae's dtype [n, d_in]."""
        return self._get_for(
            sae, ("r", id(sae)), lambda: self.on(sae.device).to(sae.dtype) - self.reconstruction(sae)
        )

    def sparse_forward(self, sae: SAE):
        """sae.sparse_forward(x): the fused forward's per-token statistics and codes."""
        return self._get_for(sae, ("fused", id(sae)), lambda: sae.sparse_forward(self.on(sae.device)))

    @staticmethod
    def row_bytes(reads: Sequence[tuple[SAE, torch.Tensor | None]]) -> int:
        """Bytes per token a Batch keeps for these reads (features None: the SAE's whole
        features, with its reconstruction and residual), as features() and columns() cache them:
        an SAE's whole features once, however many reads take them; a wide column set gathered
        from them (or every feature, no copy), a narrow one computed alone."""
        whole: dict[int, int] = {}
        cols: dict[tuple[int, int], int] = {}
        for sae, features in reads:
            size = sae.W_dec.element_size()
            if features is None or len(features) >= SLICE_MAX_FRACTION * sae.d_sae:
                whole[id(sae)] = size * (sae.d_sae + 2 * sae.d_in)
            if features is not None and len(features) < sae.d_sae:
                cols[(id(sae), id(features))] = size * len(features)
        return sum(whole.values()) + sum(cols.values())

    def columns(self, sae: SAE, features: torch.Tensor, like: SAE) -> torch.Tensor:
        """sae's `features` (int64 [m]) on x, their values in sae (encode_features), on `like`'s
        device and dtype. Cached per (sae, features tensor): accumulators that pass the same
        index tensor share the product.

        Where the features are at least half of sae's (SLICE_MAX_FRACTION), the columns are taken
        from sae's whole features (the same values: encode_features promises encode's): a slice
        would keep its own encoder copy and its screen forms for the whole pass, about 10 bytes a
        weight (1.4 GiB over the 98,304-wide study's pairs, bench/results/cpu_study_scale_8.json),
        to save a product that is at most twice as wide."""

        def make():
            if len(features) >= SLICE_MAX_FRACTION * sae.d_sae:
                f = self.features(sae)
                if not is_every_feature(sae, features):
                    f = f[:, features.to(f.device)]
            else:
                f = sae.encode_features(self.on(sae.device), features.to(sae.device))
            return f.to(like.device, like.dtype)

        return self._get_for(sae, ("cols", id(sae), id(features), id(like)), make)


@torch.no_grad()
def run_pass(
    accumulators: Sequence[Accumulator],
    acts: ActsLike,
    *,
    d_in: int,
    device: torch.device,
    progress: Progress = None,
    what: str = "acts",
) -> int:
    """Stream `acts` once (batches of [n, d_in], moved to `device`), split each batch so the widest
    accumulator's fp32 temporary and what the Batch keeps for every accumulator's reads fit the
    memory budget together, and update every accumulator with every chunk. progress(tokens so
    far) after each batch. Returns the number of tokens."""
    if not accumulators:
        raise InvalidArgumentError("run_pass: no accumulators given")
    rows = rows_per_chunk(chunk_row_bytes(accumulators), device)
    n, w, j, at = 0, dist.world(), -1, 0
    for x in as_activations(acts, what=what).batches(d_in, device):
        for chunk in x.split(rows) if x.shape[0] > rows else (x,):
            j += 1
            offset, at = at, at + chunk.shape[0]
            if not dist.mine(j):  # chunk j of the stream is rank j % world's
                continue
            batch = Batch(chunk, offset)
            for acc in accumulators:
                acc.update(batch)
            n += chunk.shape[0]
        if progress is not None:
            progress(n * w)  # global progress, as far as this rank can tell
    dist.count("tokens", n)
    if w > 1:
        for acc in accumulators:
            reduce_across_ranks(acc)
        n = dist.all_sum(n)
    return n


def chunk_row_bytes(accumulators: Sequence[Accumulator]) -> int:
    """Bytes per token of one chunk of run_pass: the widest fp32 temporary plus the Batch's cache
    for every accumulator's reads. (The cache counted nothing before: the 98,304-wide study's
    held-out pass cut 425-token chunks by its widest accumulator and kept a further 0.7 GiB of
    features per chunk.)"""
    width = max(max(a.width for a in accumulators), 1)
    reads = [r for a in accumulators for r in getattr(a, "reads", ())]
    return 4 * width + Batch.row_bytes(reads)


def reduce_across_ranks(acc) -> None:
    """Sum a Sums accumulator's state (its `summed` attributes, `n`, and any Sums it holds) over
    every rank of the process group, in float64, in place. An accumulator with a method
    `reduce_across_ranks()` (state that is not sums) reduces itself: every rank must end with the
    measurement of every rank's tokens."""
    own = getattr(acc, "reduce_across_ranks", None)
    if callable(own):
        own()
        return
    if not isinstance(acc, Sums):
        raise InvalidArgumentError(f"reduce_across_ranks: {type(acc).__name__} is not a Sums accumulator")
    for key in acc.summed:
        v = getattr(acc, key)
        if isinstance(v, torch.Tensor):
            dist.all_sum_(v)
        else:
            setattr(acc, key, dist.all_sum(v))
    for v in vars(acc).values():
        if isinstance(v, Sums):
            reduce_across_ranks(v)
    acc.n = dist.all_sum(acc.n)


def measure(accumulator: Accumulator, acts: ActsLike, sae: SAE, progress: Progress = None, what="acts"):
    """One accumulator, one pass over `acts` on `sae`'s device: its result."""
    run_pass([accumulator], acts, d_in=sae.d_in, device=sae.device, progress=progress, what=what)
    return accumulator.result()


def check_tokens(n: int, sae: SAE, fn: str) -> None:
    """Raise the one error every measurement gives for an empty stream."""
    if n == 0:
        raise InvalidArgumentError(f"{fn}: the activation stream for SAE {sae.name!r} was empty")


class Sums:
    """Base of an accumulator whose state is float64 sums: merge adds each attribute named in
    `summed` (tensors or floats) and the token count `n`."""

    summed: tuple[str, ...] = ()
    n: int = 0

    def merge(self, other) -> None:
        if type(other) is not type(self):
            mine, theirs = type(self).__name__, type(other).__name__
            raise InvalidArgumentError(f"{mine}.merge: expected another {mine}, got {theirs}")
        for key in self.summed:
            mine, theirs = getattr(self, key), getattr(other, key)
            if isinstance(mine, torch.Tensor):
                mine.add_(theirs.to(mine.device))
            else:
                setattr(self, key, mine + theirs)
        self.n += other.n
