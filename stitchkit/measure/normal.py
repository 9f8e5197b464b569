"""The normal equations of a decoder over fixed codes (one pass): what a least-squares decoder
refit solves, and, over the codes of two SAEs at once, the exact quadratic form of any change of
feature set (stitch.frontier).

For codes c [n, K] (the features of one or more SAEs, their activations fixed by their encoders)
and tokens x [n, d], with c1 = [c, 1]:
    A = c1^T c1 [K+1, K+1], B = c1^T x [K+1, d], sxx = sum |x|^2, fired [K] = tokens each fires on.
Sums are float64. On the CPU route, codes sparse enough (ops.gram) take only their nonzero
products (17x the dense GEMM at 10,811 features, L0 220).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ops.dispatch import sae_route
from ..ops.gram import SparseRows, gram_is_sparse_enough, symmetrize_
from ..sae.model import SAE, feature_index, is_every_feature
from .accumulator import Batch, Sums, check_tokens


@dataclass
class NormalEquations:
    """A, B, sxx and fired (module doc) over n tokens; `parts` says which SAE's which features
    the K code columns are, in order."""

    A: torch.Tensor
    B: torch.Tensor
    sxx: float
    fired: torch.Tensor
    n: int
    parts: list[tuple[str, torch.Tensor]]

    def solve(self, columns: torch.Tensor, old: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
        """The least-squares decoder [m + 1, d] (rows for `columns`, then the bias) of x on the
        codes `columns` (int64 [m] into the K) and a constant: the normal equations' sub-block,
        `ridge` * mean(diag) pulling each row towards `old` [m, d] (never the bias)."""
        rows = torch.cat([columns.cpu(), torch.tensor([self.A.shape[0] - 1])])
        A = self.A[rows][:, rows].clone()
        lam = ridge * float(A.diagonal()[:-1].mean().clamp_min(1e-12)) if len(columns) else 0.0
        reg = torch.full((len(rows),), lam, dtype=torch.float64)
        reg[-1] = 0.0
        A.diagonal().add_(reg)
        target = torch.cat([old.double().cpu(), torch.zeros(1, self.B.shape[1], dtype=torch.float64)])
        return torch.linalg.solve(A, self.B[rows] + reg[:, None] * target)

    def mse_of(self, columns: torch.Tensor, decoder: torch.Tensor) -> float:
        """MSE (units: stitchkit.sae) over these tokens of x ~ [c_columns, 1] decoder [m + 1, d]."""
        rows = torch.cat([columns.cpu(), torch.tensor([self.A.shape[0] - 1])])
        D = decoder.double().cpu()
        sq = self.sxx - 2 * float((D * self.B[rows]).sum()) + float((D * (self.A[rows][:, rows] @ D)).sum())
        return sq / self.n


class NormalEquationsAccumulator(Sums):
    """NormalEquations over the features `features` of each SAE in `saes` (None: all of them),
    the columns in that order."""

    summed = ("A", "B", "sxx", "fired")

    def __init__(self, saes: Sequence[SAE], features: Sequence | None = None):
        features = features or [None] * len(saes)
        self.parts = [(s, feature_index(s, f, "normal_equations")) for s, f in zip(saes, features)]
        self.like = saes[0]
        # The codes' dtype: fp32 (the sparse products' values), float64 if any SAE is float64.
        self.dtype = torch.float64 if any(s.dtype == torch.float64 for s in saes) else torch.float32
        K, d = sum(len(i) for _, i in self.parts), self.like.d_in
        dev = self.like.device
        self.A = torch.zeros(K + 1, K + 1, dtype=torch.float64, device=dev)
        self.B = torch.zeros(K + 1, d, dtype=torch.float64, device=dev)
        self.fired = torch.zeros(K, dtype=torch.float64, device=dev)
        self.sxx = 0.0
        self.sparse: bool | None = None
        self.width = K
        self.reads = list(self.parts)

    def _codes(self, batch: Batch) -> torch.Tensor:
        cols = []
        for sae, idx in self.parts:
            f = batch.features(sae) if is_every_feature(sae, idx) else batch.columns(sae, idx, self.like)
            cols.append(f.to(self.like.device, self.dtype))
        return torch.cat(cols, dim=1)

    def update(self, batch: Batch) -> None:
        f = self._codes(batch)
        x = batch.on(self.like.device).to(self.dtype)
        K = f.shape[1]
        if self.sparse is None:  # decided on the first chunk: fp32 codes on the CPU route only
            cpu = sae_route(f.device, self.dtype) == "cpu" and self.dtype == torch.float32
            self.sparse = cpu and gram_is_sparse_enough(f)
        if self.sparse:  # the upper triangle of f^T f (result() mirrors it once)
            codes = SparseRows(f)
            codes.gram_into(self.A[:K, :K])
            codes.t_dense_into(x, self.B[:K])
            self.A[:K, K] += codes.colsum()
        else:
            self.A[:K, :K] += torch.triu(f.T @ f).double()
            self.B[:K] += (f.T @ x).double()
            self.A[:K, K] += f.double().sum(0)
        self.A[K, K] += len(f)
        self.B[K] += x.double().sum(0)
        self.fired += (f > 0).sum(0).double()
        self.sxx += x.double().pow(2).sum().item()
        self.n += len(f)

    def result(self) -> NormalEquations:
        check_tokens(self.n, self.like, "normal_equations")
        A = symmetrize_(self.A.cpu().clone())
        return NormalEquations(A, self.B.cpu(), self.sxx, self.fired.cpu(), self.n,
                               [(s.name, i.cpu()) for s, i in self.parts])  # fmt: skip
