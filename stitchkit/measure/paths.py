"""Exact metrics after every step of a path of insertions and removals (insertion curves,
interpolation), in one pass and without building the SAEs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.streams import ActsLike
from ..errors import InvalidArgumentError
from ..sae.model import SAE, check_same_input, feature_index
from .accumulator import Batch, Progress, Sums, check_tokens, measure
from .metrics import Variance

# One step: (donor features added, base features removed).
Step = tuple[Sequence[int] | torch.Tensor, Sequence[int] | torch.Tensor]


@dataclass
class PathMetrics:
    """Metrics after each step of a path; entry 0 is the base SAE itself. float64 [S + 1] each,
    on the CPU: n_features, mse, normalized_mse, l0 (units: see stitchkit.sae.model)."""

    n_features: torch.Tensor
    mse: torch.Tensor
    normalized_mse: torch.Tensor
    l0: torch.Tensor
    n_tokens: int

    def rows(self) -> list[dict[str, float]]:
        return [
            dict(step=i, n_features=int(nf), mse=float(e), normalized_mse=float(v), l0=float(z))
            for i, (nf, e, v, z) in enumerate(zip(self.n_features, self.mse, self.normalized_mse, self.l0))
        ]


def step_indices(base: SAE, donor: SAE, steps: Sequence[Step], fn: str):
    """Each step's (added, removed) as int64 index tensors, checked: a base feature is removed at
    most once and a donor feature added at most once along the path."""
    adds, rems = [], []
    for s, (add, rem) in enumerate(steps):
        adds.append(feature_index(donor, add, f"{fn}: steps[{s}] added", allow_empty=True))
        rems.append(feature_index(base, rem, f"{fn}: steps[{s}] removed", allow_empty=True))
    for name, parts, sae in (("added", adds, donor), ("removed", rems, base)):
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        if len(flat) != len(torch.unique(flat)):
            raise InvalidArgumentError(f"{fn}: a feature of SAE {sae.name!r} is {name} twice along the path")
    return adds, rems


class PathAccumulator(Sums):
    """path_metrics' one-pass form. Each step's reconstruction is the previous one plus its added
    minus its removed decoder terms, in float64, on the tokens where those features fire (a step
    of a few features touches a few rows, not the whole batch)."""

    summed = ("sq", "l0")

    def __init__(self, base: SAE, donor: SAE, steps: Sequence[Step]):
        check_same_input(base, donor, "path_metrics")
        self.base, self.donor = base, donor
        dev = base.device
        self.adds, self.rems = step_indices(base, donor, steps, "path_metrics")
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        self.used = torch.unique(torch.cat(self.adds)) if self.adds else empty
        self.pos = [torch.searchsorted(self.used, a) for a in self.adds]  # within `used`
        self.w_add = donor.W_dec.detach()[self.used].to(dev, base.dtype)
        self.sq = torch.zeros(len(steps) + 1, dtype=torch.float64)
        self.l0 = torch.zeros(len(steps) + 1, dtype=torch.float64)
        self.var = Variance(base.d_in, dev)
        self.width = base.d_sae + len(self.used)

    def update(self, batch: Batch) -> None:
        base = self.base
        fb = batch.features(base)
        fd = batch.columns(self.donor, self.used, base)
        x = batch.on(base.device)
        r = x.double() - batch.reconstruction(base).double()  # the residual, float64 [n, d]
        w_base = base.W_dec.detach()
        nnz = float((fb != 0).sum())
        sq = r.pow(2).sum().item()
        self.sq[0] += sq
        self.l0[0] += nnz
        for s, (pos, rem) in enumerate(zip(self.pos, self.rems)):
            # The step changes the reconstruction only on tokens where one of its features fires:
            # those rows of the residual are updated and their squared error swapped in.
            f = torch.cat([fd[:, pos], -fb[:, rem]], dim=1)
            on = f != 0
            live = on.any(1).nonzero().flatten()
            if len(live):
                old = r[live]
                new = old - (f[live] @ torch.cat([self.w_add[pos], w_base[rem]])).double()
                sq += (new.pow(2).sum() - old.pow(2).sum()).item()
                r[live] = new
            nnz += float(on[:, : len(pos)].sum()) - float(on[:, len(pos) :].sum())
            self.sq[s + 1] += sq
            self.l0[s + 1] += nnz
        self.var.add(x)
        self.n = self.var.n

    def merge(self, other: PathAccumulator) -> None:
        super().merge(other)
        self.var.merge(other.var)
        self.n = self.var.n

    def result(self) -> PathMetrics:
        n = self.var.n
        check_tokens(n, self.base, "path_metrics")
        sizes = [self.base.d_sae]
        for a, r in zip(self.adds, self.rems):
            sizes.append(sizes[-1] + len(a) - len(r))
        mse = self.sq / n
        return PathMetrics(
            n_features=torch.tensor(sizes, dtype=torch.float64),
            mse=mse,
            normalized_mse=mse / self.var.value(),
            l0=self.l0 / n,
            n_tokens=n,
        )


def path_metrics(
    base: SAE, donor: SAE, steps: Sequence[Step], acts: ActsLike, *, progress: Progress = None
) -> PathMetrics:
    """Exact metrics of the SAE after each step of a path from `base`, in one pass.

    steps: [(donor features added, base features removed)], applied cumulatively. The SAE after
    step s is SAE.from_features([(base, kept), (donor, added so far)], base=base); its
    reconstruction is updated in float64 by each step's added minus removed decoder terms, so
    no SAE is built. A base feature may be removed once, a donor feature added once.
    """
    return measure(PathAccumulator(base, donor, steps), acts, base, progress)
