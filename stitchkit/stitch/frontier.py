"""Frankenstein under an L0 budget (the reference work's limitations 3 and 4: a greedy cosine
assembly, and wins bought with a higher L0): the MSE-L0 frontier of SAEs stitched from a (small,
large) pair, beside the natural family's.

A stitched SAE here is the small SAE with some moves applied: inserting a novel large feature
(L0 rises) or a swap group (its parents out, its children in; L0 usually falls). Every feature
keeps its activation, so with the normal equations (measure.normal) over the codes of both SAEs
on a stream of tokens, the MSE of any such SAE is an exact quadratic form, before any refit:
    r' = r + sum_k s_k c_k v_k,   s = +1 for a small feature taken out, -1 for a large one put in,
    MSE' = MSE + 2 sum_k s_k lin_k + sum_kl s_k s_l G_kl,
    lin_k = E[c_k (r . v_k)],  G_kl = E[c_k c_l] (v_k . v_l)    (r = x - small(x); c, v: codes and
                                                                 decoder rows of both SAEs)
and its L0 is exactly the small SAE's minus the removed features' firing rates plus the inserted
ones'. For each lambda of a grid, greedy descent of MSE + lambda L0 applies, one at a time, the
move with the most negative exact change given the moves already applied, until none lowers it.
Each result's decoder is then refit by least squares on the same normal equations (exactly what
retrain_decoder(method="lstsq") computes for it), and it is measured on held-out tokens.

The budget curve of a set of SAEs is, at each L0 budget B, the lowest MSE among those with
L0 <= B (a step function). The area between the natural family's curve and the stitched one,
over the budgets both reach, is positive where stitching wins at equal L0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..fit.retrain import with_decoder
from ..measure.normal import NormalEquations
from ..sae.model import SAE
from .classify import Classification
from .swaps import SwapGroup

if TYPE_CHECKING:
    from .sparse_form import SparseChangeForm

LAMBDA_FACTORS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)

# Peak bytes per entry of the [K, K] forms over K = small + large features: the normal equations'
# accumulator and its symmetrised copy, E[c c^T], V V^T, G and the temporaries of `lin` (6 float64).
FORM_BYTES = 48


def form_bytes(n_small: int, n_large: int) -> int:
    """Peak bytes of the frontier's normal equations and ChangeForm for a (small, large) pair."""
    k = n_small + n_large + 1
    return FORM_BYTES * k * k


@dataclass
class Move:
    """Take the small SAE's `removes` out and put the large SAE's `inserts` in (int64 indices)."""

    label: str
    removes: torch.Tensor
    inserts: torch.Tensor


def pair_moves(classification: Classification, groups: list[SwapGroup]) -> list[Move]:
    """Every novel large feature as an insertion, every swap group as a swap."""
    e = torch.empty(0, dtype=torch.int64)
    moves = [Move(f"novel {int(j)}", e, torch.tensor([int(j)])) for j in classification.novel_features]
    moves += [Move(f"swap {i}", g.parents.cpu(), g.children.cpu()) for i, g in enumerate(groups)]
    return moves


class MoveSet:
    """What every change form shares (n_small: the small SAE's width): a move's positions among
    the K = small + large columns, and the feature set the moves leave."""

    n_small: int

    def elements(self, move: Move) -> tuple[torch.Tensor, torch.Tensor]:
        """The move's positions in the K columns and their signs (+1 out, -1 in)."""
        pos = torch.cat([move.removes, move.inserts + self.n_small])
        sign = torch.cat([torch.ones(len(move.removes)), -torch.ones(len(move.inserts))]).double()
        return pos, sign

    def columns(self, moves: list[Move]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stitched SAE's features: (small features kept, large features put in), int64."""
        out = torch.cat([m.removes for m in moves]) if moves else torch.empty(0, dtype=torch.int64)
        keep = torch.ones(self.n_small, dtype=torch.bool)
        keep[out] = False
        ins = torch.cat([m.inserts for m in moves]) if moves else torch.empty(0, dtype=torch.int64)
        return keep.nonzero().flatten(), ins.sort().values


class ChangeForm(MoveSet):
    """The exact MSE and L0 of any change of the small SAE's feature set (module doc), from
    NormalEquations over [all small features, all large features]."""

    def __init__(self, eq: NormalEquations, small: SAE, large: SAE):
        self.eq, self.small, self.large = eq, small, large
        self.n_small = small.d_sae
        V = torch.cat([small.W_dec.detach(), large.W_dec.detach()]).double().cpu()
        b = small.b_dec.detach().double().cpu()
        K, n = V.shape[0], eq.n
        Ecc, Ec = eq.A[:K, :K] / n, eq.A[:K, K] / n
        Ecx, Ex = eq.B[:K] / n, eq.B[K] / n
        W = V[: self.n_small]
        self.G = Ecc * (V @ V.T)
        self.lin = (Ecx * V).sum(1) - Ec * (V @ b) - (Ecc[:, : self.n_small] * (V @ W.T)).sum(1)
        Es = Ecc[: self.n_small, : self.n_small]
        self.base_mse = float(
            eq.sxx / n - 2 * (b @ Ex) + b @ b - 2 * (Ecx[: self.n_small] * W).sum()
            + 2 * (Ec[: self.n_small] * (W @ b)).sum() + (Es * (W @ W.T)).sum()
        )  # fmt: skip
        self.rate = eq.fired.double() / n
        self.base_l0 = float(self.rate[: self.n_small].sum())
        self.V = V

    def change(self, moves: list[Move]) -> tuple[float, float]:
        """(MSE, L0) of the small SAE with these moves applied, before any refit."""
        parts = [self.elements(m) for m in moves]
        if not parts:
            return self.base_mse, self.base_l0
        pos, sign = torch.cat([p for p, _ in parts]), torch.cat([s for _, s in parts])
        mse = self.base_mse + 2 * float(sign @ self.lin[pos]) + float(sign @ self.G[pos][:, pos] @ sign)
        return mse, self.base_l0 - float(sign @ self.rate[pos])

    algorithm = "dense normal equations"

    def greedy(self, moves: list[Move], lam: float) -> list[int]:
        return greedy_moves(self, moves, lam)

    def refit(self, cols: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
        """The least-squares decoder [m + 1, d] on the codes `cols` (into the K) and a constant
        (NormalEquations.solve), and its MSE on the fitting tokens."""
        sol = self.eq.solve(cols, self.V[cols], ridge)
        return sol, self.eq.mse_of(cols, sol)


def greedy_moves(form: ChangeForm, moves: list[Move], lam: float) -> list[int]:
    """Indices of `moves`, in the order greedy descent of MSE + lam L0 applies them (module doc)."""
    if not moves:
        return []
    parts = [form.elements(m) for m in moves]
    width = max(len(p) for p, _ in parts)
    pos = torch.zeros(len(moves), width, dtype=torch.int64)
    sign = torch.zeros(len(moves), width, dtype=torch.float64)
    for i, (p, s) in enumerate(parts):
        pos[i, : len(p)], sign[i, : len(s)] = p, s
    quad = torch.stack([s @ form.G[p][:, p] @ s for p, s in parts])
    dl0 = -(sign * form.rate[pos]).sum(1)
    y = form.lin.clone()  # lin_k + sum over applied elements l of s_l G_kl
    free = torch.ones(len(moves), dtype=torch.bool)
    order = []
    while free.any():
        gain = 2 * (sign * y[pos]).sum(1) + quad + lam * dl0
        gain[~free] = float("inf")
        best = int(torch.argmin(gain))
        if not gain[best] < 0:
            break
        order.append(best)
        free[best] = False
        p, s = parts[best]
        y += form.G[:, p] @ s
    return order


@dataclass
class FrontierPoint:
    """One stitched SAE: its lambda, moves, exact MSE and L0 on the fitting tokens before and after
    the decoder refit, and the refit SAE (measured on held-out tokens by the caller: mse, l0)."""

    lam: float
    n_inserted: int
    n_removed: int
    n_swaps: int
    fit_mse_before: float
    fit_mse: float
    fit_l0: float
    sae: SAE
    mse: float = float("nan")
    l0: float = float("nan")

    def row(self) -> dict:
        return dict(
            lam=self.lam,
            l0=self.l0,
            mse=self.mse,
            n_features=self.sae.d_sae,
            n_inserted=self.n_inserted,
            n_removed=self.n_removed,
            n_swaps=self.n_swaps,
            fit_mse_before_refit=self.fit_mse_before,
            fit_mse=self.fit_mse,
            fit_l0=self.fit_l0,
        )


def frontier_points(
    form: ChangeForm | SparseChangeForm,
    moves: list[Move],
    lambdas: list[float] | None = None,
    ridge: float = 1e-6,
) -> list[FrontierPoint]:
    """One refit stitched SAE per lambda (module doc), duplicates dropped. lambdas default to
    LAMBDA_FACTORS times the small SAE's MSE per unit of L0 on the fitting tokens. `form`: the
    dense ChangeForm, or stitch.sparse_form's (the same greedy and refit, no [K, K] matrix)."""
    if lambdas is None:
        scale = form.base_mse / max(form.base_l0, 1e-9)
        lambdas = [f * scale for f in LAMBDA_FACTORS]
    points, seen = [], set()
    for lam in lambdas:
        chosen = [moves[i] for i in form.greedy(moves, lam)]
        kept, ins = form.columns(chosen)
        key = (tuple(kept.tolist()), tuple(ins.tolist()))
        if key in seen:
            continue
        seen.add(key)
        before, l0 = form.change(chosen)
        cols = torch.cat([kept, ins + form.n_small])
        sol, fit_mse = form.refit(cols, ridge)
        parts = [(form.small, kept)] + ([(form.large, ins)] if len(ins) else [])
        sae = SAE.from_features(parts, base=form.small, name=f"{form.small.name}+frontier{len(points)}")
        sae = with_decoder(sae, sol[:-1].to(sae.device), sol[-1].to(sae.device))
        n_swaps = sum(1 for m in chosen if len(m.removes))
        points.append(FrontierPoint(lam, len(ins), form.n_small - len(kept), n_swaps, before, fit_mse, l0,
                                    sae))  # fmt: skip
    return points


def on_frontier(points: list[tuple[float, float]]) -> list[bool]:
    """For each (l0, mse) point, whether no other point beats it: none has both L0 and MSE at most
    its own with one of them lower. The frontier is the points that are on it; the greedy's points
    for each lambda need not all be (each lambda's descent stops at its own local optimum, so
    another lambda's SAE can be better on both axes)."""
    return [
        not any(l2 <= l0 and m2 <= mse and (l2 < l0 or m2 < mse) for l2, m2 in points)
        for l0, mse in points
    ]


def budget_curve(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The budget curve's steps (module doc) of (l0, mse) points: (l0, best mse at budget l0)
    wherever the best improves, in increasing l0."""
    out, best = [], float("inf")
    for l0, mse in sorted(points):
        if mse < best:
            best = mse
            out.append((l0, mse))
    return out


def budget_area(natural: list[tuple[float, float]], stitched: list[tuple[float, float]]) -> dict:
    """The area between the two budget curves over the budgets both reach: integral of
    natural(B) - stitched(B) dB from the larger of the two smallest L0s to the smaller of the two
    largest (positive: stitching wins at equal L0); with `mean_gap` = area / width of that range."""
    nat, st = budget_curve(natural), budget_curve(stitched)
    if not nat or not st:
        return dict(area=float("nan"), mean_gap=float("nan"), l0_from=float("nan"), l0_to=float("nan"))
    lo = max(nat[0][0], st[0][0])
    hi = min(max(l for l, _ in natural), max(l for l, _ in stitched))
    if not hi > lo:
        return dict(area=float("nan"), mean_gap=float("nan"), l0_from=lo, l0_to=hi)

    def at(curve, b):
        return min((m for l0, m in curve if l0 <= b), default=float("inf"))

    cuts = sorted({lo, hi} | {l0 for l0, _ in nat + st if lo < l0 < hi})
    area = sum((at(nat, a) - at(st, a)) * (b - a) for a, b in zip(cuts, cuts[1:]))
    return dict(area=area, mean_gap=area / (hi - lo), l0_from=lo, l0_to=hi)


@dataclass
class Frontier:
    """The stitched points (held-out MSE, L0) beside the natural family's, the area, and the
    stitched SAEs themselves (refit; in the order of `stitched`)."""

    natural: list[dict]
    stitched: list[dict]
    area: dict = field(default_factory=dict)
    saes: list[SAE] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(natural=self.natural, stitched=self.stitched, **self.area)
