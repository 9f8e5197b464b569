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
from typing import Union

import torch

from ..errors import InvalidArgumentError, ShapeError

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
