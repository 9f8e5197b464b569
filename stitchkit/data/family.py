"""A synthetic SAE family at real shapes, built in seconds instead of trained in hours: for the
scale benchmark (the reference work's 768..98,304 x 768) and CI-sized whole-study tests.

A concept tree grows one level per width, each twice the last. Every concept of a level has one
fate at the next:
- persist: one child at cosine 0.97-0.995 (the same feature, relearned);
- drift: one child at cosine 0.4-0.7 (a feature that moved: novel at the 0.7 threshold);
- split: two children at cosine 0.7-0.95 each (feature splitting: reconstruction features);
and new directions fill the rest of the width (novel features). Level i's directions are SAE i's
decoder rows (unit norm) and its encoder columns; its encoder bias is one threshold, calibrated
on sample tokens so that SAE i fires on `l0[i]` features per token on average.

Tokens are sparse non-negative combinations of the finest level's concepts (each token draws
`token_l0` of them, Zipf-like by rank, magnitudes 0.5-2) plus Gaussian noise, so wider SAEs of
the family reconstruct them better, as trained ones do. All draws are seeded.

What it is not: trained. Its encoders are its decoders' transposes behind one threshold, so
siblings of a split both fire on their concepts and its reconstructions are worse than a trained
family's (normalised MSE about 0.5, and swaps raise MSE far more). It is for shapes, memory,
time and the study's plumbing at scale, not for the science's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidArgumentError
from ..sae.model import SAE

FATES = ("persist", "drift", "split")


@dataclass
class SyntheticFamily:
    """directions[i]: level i's unit rows [widths[i], d_in]; parent[i] (i >= 1): each row's
    parent row in level i - 1 (-1 for a new direction); fate[i]: the fate of each row of level
    i - 1 ("persist", "drift", "split"); saes: the family, narrowest first."""

    d_in: int
    widths: list[int]
    directions: list[torch.Tensor]
    parent: list[torch.Tensor]
    fate: list[list[str]]
    saes: list[SAE] = field(default_factory=list)
    token_l0: int = 40
    noise: float = 0.05
    seed: int = 0

    def sample(self, n: int, *, seed: int = 0, batch: int = 8192) -> torch.Tensor:
        """n tokens [n, d_in] (float32): `token_l0` of the finest concepts each (module doc)."""
        g = torch.Generator().manual_seed(self.seed * 7919 + seed)
        D = self.directions[-1]
        F = len(D)
        # Zipf-like frequencies over a seeded random order of the concepts.
        rank = torch.randperm(F, generator=g)
        weights = torch.empty(F)
        weights[rank] = 1.0 / torch.arange(1, F + 1, dtype=torch.float32) ** 0.8
        out = []
        for lo in range(0, n, batch):
            m = min(batch, n - lo)
            idx = torch.multinomial(weights, m * self.token_l0, replacement=True, generator=g).view(m, -1)
            mag = 0.5 + 1.5 * torch.rand(m, self.token_l0, generator=g)
            x = torch.nn.functional.embedding_bag(idx, D, per_sample_weights=mag, mode="sum")
            out.append(x + self.noise * torch.randn(m, self.d_in, generator=g))
        return torch.cat(out)

    def write(self, out_dir: str | Path, *, train_tokens: int, held_tokens: int) -> dict:
        """SAELens directories out_dir/saes/synthetic-WIDTH and activation stores
        out_dir/activations/{train,held}; returns their paths."""
        from ..data.store import ActivationStore
        from ..sae.io import save_sae

        out = Path(out_dir)
        saes = [save_sae(s, out / "saes" / s.name) for s in self.saes]
        stores = {}
        for name, n, seed in (("train", train_tokens, 1), ("held", held_tokens, 2)):
            stores[name] = ActivationStore.from_tensor(
                self.sample(n, seed=seed), out / "activations" / name, model="synthetic",
                hook_name="synthetic",
            ).path
        return dict(saes=saes, **stores)


def _unit(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _at_cosine(parents: torch.Tensor, cos: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Unit rows at cosine `cos` [m] to the unit rows `parents` [m, d], in random directions."""
    r = torch.randn(parents.shape, generator=g)
    r = _unit(r - (r * parents).sum(1, keepdim=True) * parents)
    return cos[:, None] * parents + (1 - cos[:, None] ** 2).clamp_min(0).sqrt() * r


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def make_family(
    d_in: int = 768,
    widths: list[int] | None = None,
    *,
    l0: tuple[float, float] = (30.0, 60.0),
    fates: tuple[float, float, float] = (0.35, 0.15, 0.5),
    token_l0: int = 40,
    noise: float = 0.05,
    calibration_tokens: int = 2048,
    seed: int = 0,
) -> SyntheticFamily:
    """The family (module doc). widths: each twice the last (default 768 .. 98,304); l0: the
    target L0 of the narrowest and the widest SAE (log-linear between); fates: the fractions of
    a level's concepts that persist, drift and split (the rest of the next width is new)."""
    widths = widths or [768 * 2**i for i in range(8)]
    if d_in < 2 or not widths or any(b != 2 * a for a, b in zip(widths, widths[1:])) or widths[0] < 1:
        raise InvalidArgumentError(
            f"make_family: need d_in >= 2 and widths each twice the last, got d_in={d_in}, {widths}"
        )
    if abs(sum(fates) - 1) > 1e-9 or min(fates) < 0:
        raise InvalidArgumentError(f"make_family: fates must be fractions adding up to 1, got {fates}")
    g = torch.Generator().manual_seed(seed)
    levels, parents, fate_lists = [_unit(torch.randn(widths[0], d_in, generator=g))], [], []
    for w in widths[1:]:
        prev = levels[-1]
        m = len(prev)
        fate = torch.multinomial(torch.tensor(fates), m, replacement=True, generator=g)
        rows, par = [], []
        for k, (lo, hi) in enumerate(((0.97, 0.995), (0.4, 0.7), (0.7, 0.95))):
            who = (fate == k).nonzero().flatten()
            for _ in range(2 if FATES[k] == "split" else 1):
                rows.append(_at_cosine(prev[who], _uniform(len(who), lo, hi, g), g))
                par.append(who)
        kids, par = torch.cat(rows)[:w], torch.cat(par)[:w]
        new = _unit(torch.randn(w - len(kids), d_in, generator=g))
        levels.append(torch.cat([kids, new]))
        parents.append(torch.cat([par, torch.full((len(new),), -1, dtype=torch.int64)]))
        fate_lists.append([FATES[int(k)] for k in fate])
    fam = SyntheticFamily(d_in, list(widths), levels, parents, fate_lists, token_l0=token_l0, noise=noise,
                          seed=seed)  # fmt: skip
    x = fam.sample(calibration_tokens, seed=10_000)
    lo, hi = math.log(l0[0]), math.log(l0[1])
    for i, D in enumerate(levels):
        target = math.exp(lo + (hi - lo) * (i / max(len(levels) - 1, 1)))
        pre = x @ D.T  # [n, w]: one threshold puts target of them above it per token, on average
        k = max(1, min(pre.numel(), round(target * len(x))))
        thr = float(torch.topk(pre.flatten(), k).values[-1])
        sae = SAE(d_in, len(D), "relu", name=f"synthetic-{len(D)}", hook_name="synthetic", init=False)
        with torch.no_grad():
            sae.W_dec.copy_(D)
            sae.W_enc.copy_(D.T)
            sae.b_enc.fill_(-thr)
            sae.b_dec.zero_()
        fam.saes.append(sae.eval())
    return fam
