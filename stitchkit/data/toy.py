"""Toy activations with known ground-truth features, for tests, benchmarks and the demo.

Each token is a sparse non-negative combination of unit "feature directions" plus a little
Gaussian noise. The structure mirrors what SAE stitching studies:
- parents: common concepts. Each has `children_per_parent` children, directions at cosine
  `child_cosine` to the parent direction. When a concept fires, one of its children (chosen
  uniformly) is what appears in the token; a concept without children appears as its parent
  direction. A narrow SAE that cannot afford every child learns one latent near the parent
  (the mean of its children); a wide SAE splits it into the children (feature splitting).
- rare: directions that fire seldom, which only a wide dictionary can afford to learn.
All draws come from one seeded generator: the same seed gives the same data.

Toy activations have no text. `toy_contexts` gives toy rows synthetic contexts (made-up token ids,
"texts" of fixed length) so that what reads a store's contexts (windows of tokens around a row)
runs on toy stores too; the labels mean nothing about the activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from .lens import Contexts

TOY_TOKENIZER = "toy"  # the tokenizer name of toy contexts: token id i reads "tok{i}"


@dataclass
class ToyData:
    """A seeded generator of toy activations.

    directions:   float32 [n_features, d_in], unit rows: parents, then children, then rare.
    kind:         list of "parent" / "child" / "rare" per direction.
    parent_of:    int64 [n_features], the parent row of each child, -1 for others.
    """

    d_in: int
    directions: torch.Tensor
    kind: list[str]
    parent_of: torch.Tensor
    p_parent: float
    p_rare: float
    noise: float
    seed: int

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    def sample(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """n tokens, float32 [n, d_in]. A given (seed, n) always gives the same tensor."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (seed or 0))
        parents = [i for i, k in enumerate(self.kind) if k == "parent"]
        rare = torch.tensor([i for i, k in enumerate(self.kind) if k == "rare"], dtype=torch.long)
        coef = torch.zeros(n, self.n_features)
        for p in parents:
            kids = (self.parent_of == p).nonzero().flatten()
            on = torch.rand(n, generator=g) < self.p_parent
            mag = 0.5 + torch.rand(n, generator=g) * 1.5
            if len(kids):
                pick = kids[torch.randint(len(kids), (n,), generator=g)]
                coef[torch.arange(n), pick] += on * mag
            else:
                coef[:, p] += on * mag
        if len(rare):
            on = torch.rand(n, len(rare), generator=g) < self.p_rare
            coef[:, rare] = on * (0.5 + torch.rand(n, len(rare), generator=g) * 1.5)
        x = coef @ self.directions
        return x + self.noise * torch.randn(n, self.d_in, generator=g)

    def batches(self, n_tokens: int, batch_size: int, *, seed: int = 0) -> Iterator[torch.Tensor]:
        """Batches [<=batch_size, d_in] adding up to n_tokens tokens, reproducible per seed."""
        if batch_size < 1 or n_tokens < 0:
            raise InvalidArgumentError(
                f"ToyData.batches: need batch_size >= 1 and n_tokens >= 0, got {batch_size}, {n_tokens}"
            )
        for i, start in enumerate(range(0, n_tokens, batch_size)):
            yield self.sample(min(batch_size, n_tokens - start), seed=seed * 100_003 + i)


def make_toy(
    d_in: int = 64,
    n_parents: int = 32,
    children_per_parent: int = 2,
    n_rare: int = 32,
    *,
    child_cosine: float = 0.8,
    p_parent: float = 0.04,
    p_rare: float = 0.004,
    noise: float = 0.01,
    seed: int = 0,
) -> ToyData:
    """Build a toy data set; see the module doc for its structure."""
    if d_in < 2 or n_parents < 0 or children_per_parent < 0 or n_rare < 0:
        raise InvalidArgumentError(
            f"make_toy: need d_in >= 2 and non-negative counts, got d_in={d_in}, "
            f"n_parents={n_parents}, children_per_parent={children_per_parent}, n_rare={n_rare}"
        )
    if not 0 < child_cosine < 1:
        raise InvalidArgumentError(f"make_toy: child_cosine must lie in (0, 1), got {child_cosine}")
    g = torch.Generator().manual_seed(seed)

    def unit(m: torch.Tensor) -> torch.Tensor:
        return m / m.norm(dim=-1, keepdim=True)

    parents = unit(torch.randn(n_parents, d_in, generator=g))
    children, parent_of = [], []
    for p in range(n_parents):
        for _ in range(children_per_parent):
            r = torch.randn(d_in, generator=g)
            r = unit(r - (r @ parents[p]) * parents[p])  # orthogonal to the parent
            s = (1 - child_cosine**2) ** 0.5
            children.append(child_cosine * parents[p] + s * r)
            parent_of.append(p)
    rare = unit(torch.randn(n_rare, d_in, generator=g))
    dirs = torch.cat([parents, torch.stack(children) if children else parents[:0], rare])
    kind = ["parent"] * n_parents + ["child"] * len(children) + ["rare"] * n_rare
    parent_idx = torch.full((len(kind),), -1, dtype=torch.long)
    parent_idx[n_parents : n_parents + len(children)] = torch.tensor(parent_of, dtype=torch.long)
    return ToyData(d_in, dirs, kind, parent_idx, p_parent, p_rare, noise, seed)


def toy_contexts(n: int, *, text_len: int = 32, vocab: int = 1000, seed: int = 0) -> Contexts:
    """Synthetic Contexts for n toy rows: row r is token r % text_len of "text" r // text_len, its
    token id a fixed hash of (r, seed) below `vocab`. The same row always gets the same context,
    whatever n. Their tokenizer is TOY_TOKENIZER."""
    if n < 0 or text_len < 1 or vocab < 1:
        raise InvalidArgumentError(
            f"toy_contexts: need n >= 0, text_len >= 1 and vocab >= 1, got {n}, {text_len}, {vocab}"
        )
    rows = torch.arange(n, dtype=torch.int64)
    ids = ((rows + seed * 1_000_003) * 2_654_435_761 % 2**32) % vocab  # Knuth's multiplicative hash
    return Contexts(ids.to(torch.int32), rows // text_len, (rows % text_len).to(torch.int32))


def toy_token_strings(ids: list[int]) -> list[str]:
    """The strings of toy token ids ("tok{id}")."""
    return [f"tok{i}" for i in ids]


def ground_truth_rows(toy: ToyData, small, large, novel: torch.Tensor, cos: float = 0.9) -> list[dict]:
    """What the headline pair's classes recover of the planted directions, one row per class
    (novel, reconstruction), for the toy report.

    A planted direction is recovered by an SAE when one of its decoder rows is within `cos` of it;
    it is new at the large SAE when the large one recovers it and the small one does not. Each
    large feature counts as matching its nearest planted direction (if within `cos`). Per class:
    how many of its features match a new direction, one the small SAE already had, or none; its
    precision for new directions (the share of its features that match one) and its recall (the
    share of the new directions whose matching large features include one of the class), split
    by the kind of direction (a split's child, a rare direction)."""
    from ..stitch.similarity import max_cosine

    dirs = toy.directions.float()
    W_large, W_small = large.W_dec.detach().float().cpu(), small.W_dec.detach().float().cpu()
    best = max_cosine(W_large, dirs)  # per large feature: its nearest planted direction
    matched = torch.where(best.values > cos, best.indices, torch.full_like(best.indices, -1))
    in_small = max_cosine(dirs, W_small).values > cos  # per direction
    in_large = max_cosine(dirs, W_large).values > cos
    new = in_large & ~in_small
    kinds = [k for k in ("child", "rare") if k in toy.kind]
    rows = []
    for label, members in (("novel", novel.cpu()), ("reconstruction", ~novel.cpu())):
        m = matched[members]
        hits = m[m >= 0]
        to_new = int(new[hits].sum()) if len(hits) else 0
        row = dict(
            cls=label,
            features=int(members.sum()),
            match_new=to_new,
            match_old=int(len(hits)) - to_new,
            match_none=int((m < 0).sum()),
            precision=to_new / len(m) if len(m) else float("nan"),
        )
        found = set(int(i) for i in hits.tolist())
        for kind in kinds:
            targets = [i for i in range(len(toy.kind)) if toy.kind[i] == kind and bool(new[i])]
            got = sum(1 for i in targets if i in found)
            row[f"recall_{kind}"] = got / len(targets) if targets else float("nan")
            row[f"new_{kind}"] = len(targets)
        rows.append(row)
    return rows
