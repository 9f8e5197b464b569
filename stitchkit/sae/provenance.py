"""Provenance: for every feature of an SAE, the SAE it came from and its index there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError, ShapeError


@dataclass(frozen=True)
class Provenance:
    """Per-feature origin of an SAE's features.

    sources:   names of the source SAEs, deduplicated, in first-seen order.
    source_id: int64 [d_sae], index into `sources` for each feature.
    index:     int64 [d_sae], the feature's index in its source SAE.
    """

    sources: tuple[str, ...]
    source_id: torch.Tensor
    index: torch.Tensor

    def __post_init__(self) -> None:
        if self.source_id.shape != self.index.shape or self.source_id.dim() != 1:
            raise ShapeError(
                f"provenance: source_id {tuple(self.source_id.shape)} and index "
                f"{tuple(self.index.shape)} must be 1-D and of the same length"
            )
        if len(self.source_id) and (
            int(self.source_id.min()) < 0 or int(self.source_id.max()) >= len(self.sources)
        ):
            raise ShapeError(
                f"provenance: source_id must lie in [0, {len(self.sources)}) "
                f"(one per source name), found values in "
                f"[{int(self.source_id.min())}, {int(self.source_id.max())}]"
            )

    @classmethod
    def identity(cls, name: str, d_sae: int) -> Provenance:
        """Features 0..d_sae-1 of the SAE called `name`."""
        return cls(
            (name,),
            torch.zeros(d_sae, dtype=torch.int64),
            torch.arange(d_sae, dtype=torch.int64),
        )

    def __len__(self) -> int:
        return len(self.index)

    def select(self, features: torch.Tensor) -> Provenance:
        """Provenance of the features at positions `features` (int64 [m])."""
        return Provenance(self.sources, self.source_id[features], self.index[features])

    @classmethod
    def concat(cls, parts: Sequence[Provenance]) -> Provenance:
        """Provenance of the features of `parts`, one after another."""
        if not parts:
            raise InvalidArgumentError("Provenance.concat: expected at least one part, got none")
        names: list[str] = []
        ids = []
        for part in parts:
            remap = []
            for name in part.sources:
                if name not in names:
                    names.append(name)
                remap.append(names.index(name))
            remap_t = torch.tensor(remap, dtype=torch.int64)
            ids.append(remap_t[part.source_id] if len(part) else part.source_id)
        return cls(tuple(names), torch.cat(ids), torch.cat([p.index for p in parts]))

    def entries(self) -> list[tuple[str, int]]:
        """[(source name, source index)] for every feature, in order."""
        return [(self.sources[s], i) for s, i in zip(self.source_id.tolist(), self.index.tolist())]
