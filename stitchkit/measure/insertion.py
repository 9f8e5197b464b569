"""The exact MSE change of inserting each donor feature alone into a base SAE (one pass).

An inserted feature's activation is its value in its own SAE, and its decoder row is added to the
base reconstruction: SAE*(x) = SAE_base(x) + f_donor,j(x) W_dec_donor,j, which is exactly what
`SAE.from_features` builds. So dMSE_j = E[f_j^2 |w_j|^2 - 2 f_j (r . w_j)], r = x - base(x).
"""

from __future__ import annotations

import torch

from ..data.streams import ActsLike
from ..ops.codes.cpu import nonzeros_cpu, rowdots_cpu
from ..ops.dispatch import sae_route
from ..sae.model import SAE, check_same_input, feature_index, is_every_feature
from .accumulator import Batch, Progress, Sums, check_tokens, measure


class InsertionAccumulator(Sums):
    """marginal_delta_mse's one-pass form over donor features `features` (None: all)."""

    summed = ("acc",)

    def __init__(self, base: SAE, donor: SAE, features=None):
        check_same_input(base, donor, "marginal_delta_mse")
        self.base, self.donor = base, donor
        self.idx = feature_index(donor, features, "marginal_delta_mse")
        W = donor.W_dec.detach()
        # No copy of a whole decoder.
        self.w = (W if is_every_feature(donor, self.idx) else W[self.idx]).to(base.device, base.dtype)
        self.w_sq = self.w.double().pow(2).sum(1)
        self.acc = torch.zeros(len(self.idx), dtype=torch.float64, device=base.device)
        self.width = len(self.idx)
        self.reads = [(base, None), (donor, self.idx)]

    def update(self, batch: Batch) -> None:
        r = batch.residual(self.base)
        f = batch.columns(self.donor, self.idx, self.base)
        nz = nonzeros_cpu(f) if sae_route(f.device, f.dtype) == "cpu" else None
        if nz is None:  # dense codes (or another device): r . w_j for every token and feature
            self.acc += f.double().pow(2).sum(0) * self.w_sq - 2 * (f * (r @ self.w.T)).double().sum(0)
        else:  # sparse codes: r . w_j only where f_j fires (nnz x d, not n x m x d)
            v = nz.values.double()
            dots = rowdots_cpu(nz.rows, nz.cols, r, self.w).double()
            self.acc.index_add_(0, nz.cols, v.pow(2) * self.w_sq[nz.cols] - 2 * v * dots)
        self.n += batch.x.shape[0]

    def result(self) -> torch.Tensor:
        check_tokens(self.n, self.base, "marginal_delta_mse")
        return (self.acc / self.n).cpu()


def marginal_delta_mse(
    base: SAE, donor: SAE, acts: ActsLike, features=None, *, progress: Progress = None
) -> torch.Tensor:
    """The exact change in `base`'s MSE from inserting each donor feature alone.

    features: donor feature indices (default: all), m of them. Returns float64 [m] on the CPU:
    dMSE_j = E[f_j^2 |w_j|^2 - 2 f_j (r . w_j)], with r = x - base(x), f_j the donor feature's
    activation in the donor SAE and w_j its decoder row; negative = the insertion helps.
    Units: MSE (squared error summed over d_in, mean over tokens). One pass over `acts`;
    memory O(batch x m) (batches are split to fit). On the CPU route, codes at most 3% nonzero
    take r . w_j only where f_j fires (ops.codes.cpu.rowdots_cpu), not the dense r W^T.
    """
    return measure(InsertionAccumulator(base, donor, features), acts, base, progress)
