"""The exact dMSE and dL0 of applying each swap group alone to a base SAE (one pass).

With u_g = sum_children f_c w_c - sum_parents f_p w_p (the change of the reconstruction),
dMSE_g = E[|u_g|^2 - 2 r . u_g], r = x - base(x).

Where the members' codes are sparse (the CPU route), each chunk works on their nonzeros:
r . w_j where f_j fires, and u_g built per token from the group's firing members, so a chunk
costs O(nnz x d_in) (at 49,152 -> 98,304 the dense form was the held-out pass's slowest part).
Otherwise the dense form: small groups together through their within-group feature pairs,
large ones (> LARGE_GROUP members) by a Gram matrix each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.streams import ActsLike
from ..errors import InvalidArgumentError
from ..ops.codes.cpu import Nonzeros, nonzeros_cpu, rowdots_cpu
from ..ops.dispatch import rows_per_chunk, sae_route
from ..sae.model import SAE, check_same_input, feature_index
from .accumulator import Batch, Progress, Sums, check_tokens, measure
from .paths import Step

LARGE_GROUP = 32


class SwapAccumulator(Sums):
    """swap_delta's one-pass form over groups [(donor features added, base features removed)]."""

    summed = ("lin", "quad", "nnz")

    def __init__(self, base: SAE, donor: SAE, groups: Sequence[Step]):
        check_same_input(base, donor, "swap_delta")
        self.base, self.donor = base, donor
        dev = base.device
        G = self.n_groups = len(groups)
        add_idx, rem_idx, gid_add, gid_rem = [], [], [], []
        for g, (add, rem) in enumerate(groups):
            a = feature_index(donor, add, f"swap_delta: groups[{g}] children", allow_empty=True)
            r = feature_index(base, rem, f"swap_delta: groups[{g}] parents", allow_empty=True)
            if len(a) + len(r) == 0:
                raise InvalidArgumentError(f"swap_delta: groups[{g}] has neither children nor parents")
            add_idx.append(a)
            rem_idx.append(r)
            gid_add.append(torch.full((len(a),), g, device=dev))
            gid_rem.append(torch.full((len(r),), g, device=dev))
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        # Members: every (source, feature) of every group; sign +1 for children, -1 for parents.
        self.m_add = torch.cat(add_idx) if G else empty
        self.m_rem = torch.cat(rem_idx) if G else empty
        self.gid = torch.cat(gid_add + gid_rem) if G else empty
        n_add = len(self.m_add)
        sign = torch.cat([torch.ones(n_add, device=dev), -torch.ones(len(self.m_rem), device=dev)])
        self.sign = sign.to(base.dtype)
        self.W = torch.cat(
            [donor.W_dec.detach()[self.m_add].to(dev, base.dtype), base.W_dec.detach()[self.m_rem]]
        )
        # Within-group pairs (a, b) of members for the small groups, a Gram per large group.
        sizes = torch.bincount(self.gid, minlength=G)
        order = torch.argsort(self.gid, stable=True)
        starts = torch.cumsum(sizes, 0) - sizes
        pairs_a, pairs_b, big = [], [], []
        for g in range(G):
            mem = order[starts[g] : starts[g] + sizes[g]]
            if len(mem) > LARGE_GROUP:
                big.append((g, mem))
            else:
                pairs_a.append(mem.repeat_interleave(len(mem)))
                pairs_b.append(mem.repeat(len(mem)))
        self.pa = torch.cat(pairs_a) if pairs_a else empty
        self.pb = torch.cat(pairs_b) if pairs_b else empty
        s, W = self.sign, self.W
        self.pair_w = (s[self.pa] * s[self.pb] * (W[self.pa] * W[self.pb]).sum(1)).double()
        self.big_w = [
            (g, mem, (s[mem, None] * s[None, mem] * (W[mem] @ W[mem].T)).double()) for g, mem in big
        ]
        m = len(self.gid)
        self.lin = torch.zeros(m, dtype=torch.float64, device=dev)
        self.quad = torch.zeros(G, dtype=torch.float64, device=dev)
        self.nnz = torch.zeros(m, dtype=torch.float64, device=dev)
        self.width = m + max(base.d_sae, 1)
        self.reads = [(base, None), (donor, self.m_add), (base, self.m_rem)]

    def update(self, batch: Batch) -> None:
        if self.n_groups == 0:
            self.n += batch.x.shape[0]
            return
        base = self.base
        r = batch.residual(base)
        F = torch.cat(
            [batch.columns(self.donor, self.m_add, base), batch.columns(base, self.m_rem, base)], dim=1
        )
        nz = nonzeros_cpu(F) if sae_route(F.device, F.dtype) == "cpu" else None
        if nz is not None:
            self._update_sparse(nz, r)
        else:
            self._update_dense(F, r)
        self.n += batch.x.shape[0]

    def _update_sparse(self, nz: Nonzeros, r: torch.Tensor) -> None:
        v = nz.values.double()
        self.lin.index_add_(0, nz.cols, v * rowdots_cpu(nz.rows, nz.cols, r, self.W).double())
        self.nnz += torch.bincount(nz.cols, minlength=len(self.gid)).double()
        # |u_g|^2 per (token, group): u summed in float64 over the group's firing members, in
        # blocks of whole tokens (a (token, group) split across blocks would lose its cross terms).
        G, d, nnz = self.n_groups, self.W.shape[1], len(nz.rows)
        coef = v * self.sign.double()[nz.cols]
        step = rows_per_chunk(3 * 8 * d, self.W.device)
        lo = 0
        while lo < nnz:
            hi = min(nnz, lo + step)
            if hi < nnz:  # back to the start of hi's token, or on to the end of lo's
                t = int(nz.rows[hi])
                hi = int(nz.starts[t])
                if hi <= lo:
                    hi = int(nz.starts[t + 1]) if t + 1 < len(nz.starts) else nnz
            cols = nz.cols[lo:hi]
            key, inv = torch.unique(nz.rows[lo:hi] * G + self.gid[cols], return_inverse=True)
            u = torch.zeros(len(key), d, dtype=torch.float64, device=self.W.device)
            u.index_add_(0, inv, coef[lo:hi, None] * self.W[cols].double())
            self.quad.index_add_(0, key % G, u.pow(2).sum(1))
            lo = hi

    def _update_dense(self, F: torch.Tensor, r: torch.Tensor) -> None:
        base = self.base
        self.lin += (F * (r @ self.W.T)).double().sum(0)
        self.nnz += (F != 0).double().sum(0)
        pairs = torch.arange(len(self.pa), device=base.device)
        for chunk in pairs.split(rows_per_chunk(4 * F.shape[0], base.device)):
            co = (F[:, self.pa[chunk]] * F[:, self.pb[chunk]]).double().sum(0)
            self.quad.index_add_(0, self.gid[self.pa[chunk]], co * self.pair_w[chunk])
        for g, mem, ww in self.big_w:
            Fg = F[:, mem].double()
            self.quad[g] += (Fg.T @ Fg * ww).sum()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_groups == 0:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty.clone()
        check_tokens(self.n, self.base, "swap_delta")
        G, dev, sign = self.n_groups, self.base.device, self.sign.double()
        lin_g = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, self.gid, self.lin * sign)
        dl0 = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, self.gid, self.nnz * sign)
        return ((self.quad - 2 * lin_g) / self.n).cpu(), (dl0 / self.n).cpu()


def swap_delta(
    base: SAE, donor: SAE, groups: Sequence[Step], acts: ActsLike, *, progress: Progress = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact change in MSE and in L0 from applying each swap alone to `base`.

    groups: [(donor features added, base features removed)] (e.g. SwapGroup.children/.parents).
    Returns (dMSE float64 [G], dL0 float64 [G]) on the CPU. One pass (none for no groups).
    """
    acc = SwapAccumulator(base, donor, groups)
    if acc.n_groups == 0:
        return acc.result()
    return measure(acc, acts, base, progress)
