"""Progress lines a person can follow: a long loop's rate and time left, through a stage's
`progress(message)` callback. The library prints nothing itself, except where a caller leaves
progress at "auto" and stderr is a terminal (`resolve`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def resolve(progress) -> Callable[[str], None]:
    """A `progress` argument as a callable: a callable as given; None: silent; "auto": timestamped
    lines on stderr when it is a terminal (a person is watching), else silent."""
    import sys

    if callable(progress):
        return progress
    if progress == "auto" and sys.stderr.isatty():
        t0 = time.monotonic()

        def say(message: str) -> None:
            print(f"[{time.monotonic() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

        return say
    return lambda message: None


class Ticker:
    """Progress lines for a long loop through the study's `progress(message)`: at most one every
    `every` seconds, with the rate and, where the total is known, the time left."""

    def __init__(self, say: Callable[[str], None], what: str, total: float | None, unit: str,
                 every: float = 5.0):  # fmt: skip
        self.say, self.what, self.total, self.unit, self.every = say, what, total, unit, every
        self.clock = time.monotonic
        self.t0 = self.last = self.clock()

    def __call__(self, done: float, note: str = "") -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        left = ""
        if self.total:
            eta = (self.total - done) / max(rate, 1e-9)
            left = f" of {self.total:,.0f} ({100 * done / self.total:.0f}%), ~{eta:.0f} s left"
        pace = f"{rate:,.1f} {self.unit}/s" if rate >= 1 else f"{1 / max(rate, 1e-9):,.1f} s each"
        self.say(f"{self.what}: {done:,.0f} {self.unit}{left}, {pace}{note}")


def tokens_in(acts) -> int | None:
    """The number of tokens of a tensor, list of tensors or store (None for other streams)."""
    if isinstance(acts, torch.Tensor):
        return acts.shape[0] if acts.dim() == 2 else None
    if isinstance(acts, (list, tuple)) and all(isinstance(a, torch.Tensor) for a in acts):
        return sum(a.shape[0] for a in acts)
    return getattr(acts, "n_tokens", None)


def batches_in(acts, batch_size: int = 4096) -> int | None:
    """How many batches one pass over `acts` yields (data.streams' batching; None where unknown)."""
    if isinstance(acts, (list, tuple)):
        return len(acts)
    n = tokens_in(acts)
    return None if n is None else math.ceil(n / batch_size)
