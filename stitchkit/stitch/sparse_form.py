"""The sparse co-firing forms: the frontier's change form (stitch.frontier.ChangeForm) and greedy
selection's MarginalGram (measure.gram) with no matrix quadratic in the features.

Both are quadratic forms G_kl = E[c_k c_l] (v_k . v_l) over codes c and decoder rows v. E[c c^T]
is nonzero only for features that fire on a common token, and codes are sparse (L0 of tens to
hundreds among 10^4-10^5 features), so these forms keep the codes themselves, their nonzeros over
the fitting tokens, token- and feature-major, and gather one column of E[c c^T] when a greedy
step needs it (ops.codes.cofire_cpu). Every quantity is the dense form's, summed in another order
in float64, so the greedy applies the same moves (barring exact ties within rounding), and the
frontier's refit solves the same normal equations by conjugate gradients (fit.cg).

Memory: about 56 bytes per code nonzero over the fitting tokens (int64 indices and float64
values, token- and feature-major), plus, for the frontier, 8 d bytes per token while c^T x is
formed and 16 K d bytes (decoder rows and c^T x, float64); against 48 K^2 bytes for the dense
frontier (frontier.form_bytes) and 32 m^2 for the dense Gram (measure.gram.gram_bytes).
Time: a greedy step costs (tokens its features fire on) x L0 x d.

What the exactness rests on: each stitched SAE's MSE and L0 are exact on the fitting tokens, and
each greedy step's choice is exact among the candidate moves; the moves themselves are the
pair's novel insertions and its swap groups (the links graph's components at the threshold,
stitch.swaps), so the frontier searches that family of stitched SAEs, not every feature subset.
"""

from __future__ import annotations

import torch

from .. import dist
from ..fit.cg import SparseCodes, solve_cg
from ..measure.accumulator import Batch, Sums, check_tokens
from ..ops.codes.cpu import nonzeros_cpu, rowdots_cpu
from ..ops.numba_jit import load
from ..sae.model import SAE, feature_index, is_every_feature
from .frontier import MoveSet


class CodeColumnsAccumulator(Sums):
    """Over a stream of tokens: the nonzeros of the codes of `parts` ([(sae, features or None)],
    the K columns in that order) and the sums the sparse forms need, all float64: lin_k = sum of
    c_k (r . v_k) with r = x - base(x); fired_k; sum of c_k^2; base's squared error; sum |x|^2;
    and with `keep_x` the tokens themselves (for c^T x)."""

    summed = ("lin", "fired", "sq", "sse", "sxx")

    def __init__(self, base: SAE, parts, keep_x: bool = False):
        self.base = base
        self.parts = [(s, feature_index(s, f, "sparse_form")) for s, f in parts]
        self.V = torch.cat([s.W_dec.detach()[i.to(s.device)].double().cpu() for s, i in self.parts])
        self.offsets = torch.tensor([0] + [len(i) for _, i in self.parts]).cumsum(0).tolist()
        K = self.V.shape[0]
        self.W_base = base.W_dec.detach().double().cpu()
        self.b_base = base.b_dec.detach().double().cpu()
        self.lin = torch.zeros(K, dtype=torch.float64)
        self.fired = torch.zeros(K, dtype=torch.float64)
        self.sq = torch.zeros(K, dtype=torch.float64)
        self.sse = self.sxx = 0.0
        self.keep_x = keep_x
        self.rows: list[torch.Tensor] = []
        self.cols: list[torch.Tensor] = []
        self.vals: list[torch.Tensor] = []
        self.xs: list[torch.Tensor] = []
        self.local_n = 0
        self.width = K
        self.reads = [(base, None)] + list(self.parts)

    def update(self, batch: Batch) -> None:
        x64 = batch.x.detach().double().cpu()
        nz = nonzeros_cpu(batch.features(self.base).detach().cpu(), max_density=1.0)
        recon = torch.empty_like(x64)  # the base's reconstruction in float64, from its nonzeros
        crow = torch.cat([nz.starts, torch.tensor([len(nz.values)])])
        load("codes.kernels_cpu").matmul(crow.numpy(), nz.cols.contiguous().numpy(),
                                         nz.values.double().numpy(), self.W_base.numpy(),
                                         self.b_base.numpy(), recon.numpy())  # fmt: skip
        r64 = x64 - recon
        self.sse += float(r64.pow(2).sum())
        self.sxx += float(x64.pow(2).sum())
        for (sae, idx), off in zip(self.parts, self.offsets):
            f = batch.features(sae) if is_every_feature(sae, idx) else batch.columns(sae, idx, self.base)
            rows, cols = f.detach().nonzero().unbind(1)
            vals = f[rows, cols].detach().double().cpu()
            rows, cols = rows.cpu(), cols.cpu() + off
            dots = rowdots_cpu(rows, cols, r64, self.V)
            self.lin.index_add_(0, cols, vals * dots)
            self.fired.index_add_(0, cols, torch.ones_like(vals))
            self.sq.index_add_(0, cols, vals.pow(2))
            self.rows.append(rows + self.local_n)
            self.cols.append(cols)
            self.vals.append(vals.float() if f.dtype != torch.float64 else vals)
        if self.keep_x:
            self.xs.append(batch.x.detach().cpu().clone())
        self.local_n += len(x64)
        self.n += len(x64)

    def merge(self, other) -> None:
        super().merge(other)
        self.rows += [r + self.local_n for r in other.rows]
        self.cols += other.cols
        self.vals += other.vals
        self.xs += other.xs
        self.local_n += other.local_n

    def result(self) -> CodeColumns:
        check_tokens(self.n, self.base, "sparse_form")
        empty = torch.empty(0, dtype=torch.int64)
        rows = torch.cat(self.rows) if self.rows else empty
        cols = torch.cat(self.cols) if self.cols else empty
        vals = torch.cat(self.vals).double() if self.vals else torch.empty(0, dtype=torch.float64)
        x = torch.cat(self.xs) if self.keep_x and self.xs else None
        if dist.world() > 1:  # every rank's codes on every rank (run_pass summed the sums)
            sizes = dist.gather_objects(self.local_n)
            rows = dist.gather_cat(rows + sum(sizes[: dist.rank()]))
            cols, vals = dist.gather_cat(cols), dist.gather_cat(vals)
            if x is not None:
                x = dist.gather_cat(x)
        order = torch.argsort(rows, stable=True)
        return CodeColumns(self.n, self.V, rows[order], cols[order], vals[order], self.lin, self.fired,
                           self.sq, self.sse, self.sxx, x)  # fmt: skip


class CodeColumns:
    """The codes c [n, K] of one or more SAEs' features over n tokens, by their nonzeros
    (SparseCodes, every rank's), the decoder rows V [K, d] (float64) and CodeColumnsAccumulator's
    sums; B = c1^T x [K + 1, d] float64 where the tokens were kept."""

    def __init__(self, n, V, rows, cols, vals, lin, fired, sq, sse, sxx, x=None):
        self.n, self.V, self.K = n, V, V.shape[0]
        self.codes = SparseCodes.from_nonzeros(self.K, n, rows, cols, vals, reduce=False)
        self.nz = self.codes._all
        self.lin, self.fired, self.sq, self.sse, self.sxx = lin, fired, sq, sse, sxx
        self.B = None
        if x is not None:
            x64 = x.double().contiguous()
            top = torch.empty(self.K, x64.shape[1], dtype=torch.float64)
            f = self.nz
            f.kernels.t_matmul(f.fcrow.numpy(), f.tok.numpy(), f.fvalues[torch.float64].numpy(), x64.numpy(),
                               top.numpy())  # fmt: skip
            self.B = torch.cat([top, x64.sum(0)[None]])

    def kernel_codes(self) -> tuple:
        """The codes as cofire_cpu's kernels take them (token-major, then feature-major)."""
        f = self.nz
        return (f.crow, f.cols, f.values[torch.float64], f.fcrow, f.tok, f.fvalues[torch.float64])

    def greedy(self, mstart, melem, msign, elem_move, elem_sign, gain, forced=None) -> tuple:
        """cofire_cpu.greedy on these codes: (picks int64, the gain of each when picked float64)."""
        M = len(mstart) - 1
        picks = torch.empty(M, dtype=torch.int64)
        picked = torch.empty(M, dtype=torch.float64)
        forced = torch.empty(0, dtype=torch.int64) if forced is None else forced.to(torch.int64).contiguous()
        args = [a.numpy() for a in self.kernel_codes()]
        count = load("codes.cofire_cpu").greedy(
            *args, self.V.numpy(), 1.0 / self.n, mstart.numpy(), melem.numpy(), msign.numpy(),
            elem_move.numpy(), elem_sign.numpy(), gain.clone().numpy(), forced.numpy(), picks.numpy(),
            picked.numpy(),
        )  # fmt: skip
        return picks[:count], picked[:count]

    def subset(self, columns: torch.Tensor) -> SparseCodes:
        """The codes of `columns` (int64 [m] into the K, in that order) alone."""
        new = torch.full((self.K,), -1, dtype=torch.int64)
        new[columns] = torch.arange(len(columns))
        f = self.nz
        rows = torch.repeat_interleave(torch.arange(self.n), torch.diff(f.crow))
        keep = new[f.cols] >= 0
        return SparseCodes.from_nonzeros(len(columns), self.n, rows[keep], new[f.cols[keep]],
                                         f.values[torch.float64][keep], reduce=False)  # fmt: skip

    def quadratic(self, positions: torch.Tensor, signs: torch.Tensor) -> float:
        """E |sum over the given columns k of s_k c_k v_k|^2: the quadratic term of applying them."""
        W = torch.zeros_like(self.V)
        W[positions] = signs.double()[:, None] * self.V[positions]
        y = torch.empty(self.n, self.V.shape[1], dtype=torch.float64)
        f = self.nz
        f.kernels.matmul(f.crow.numpy(), f.cols.numpy(), f.values[torch.float64].numpy(), W.numpy(),
                         torch.zeros(W.shape[1], dtype=torch.float64).numpy(), y.numpy())  # fmt: skip
        return float(y.pow(2).sum()) / self.n


def _move_arrays(form, moves) -> tuple:
    """Moves as cofire_cpu's arrays: mstart, melem, msign, elem_move, elem_sign."""
    parts = [form.elements(m) for m in moves]
    sizes = torch.tensor([len(p) for p, _ in parts], dtype=torch.int64)
    mstart = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    melem = torch.cat([p for p, _ in parts]).to(torch.int64) if parts else torch.empty(0, dtype=torch.int64)
    msign = torch.cat([s for _, s in parts]).double() if parts else torch.empty(0, dtype=torch.float64)
    elem_move = torch.full((form.K,), -1, dtype=torch.int64)
    if len(melem) and len(torch.unique(melem)) != len(melem):
        raise ValueError("sparse_form: a feature belongs to two moves")
    elem_move[melem] = torch.repeat_interleave(torch.arange(len(moves)), sizes)
    elem_sign = torch.zeros(form.K, dtype=torch.float64)
    elem_sign[melem] = msign
    return mstart, melem, msign, elem_move, elem_sign


class SparseChangeForm(MoveSet):
    """ChangeForm's exact MSE and L0 of any change of the small SAE's feature set, its greedy and
    its refit, from the codes of both SAEs over the fitting tokens (CodeColumns with the tokens
    kept) instead of the [K, K] normal equations."""

    algorithm = "sparse co-firing form"

    def __init__(self, cc: CodeColumns, small: SAE, large: SAE):
        self.cc, self.small, self.large = cc, small, large
        self.n_small, self.K, self.V = small.d_sae, cc.K, cc.V
        self.base_mse = cc.sse / cc.n
        self.lin = cc.lin / cc.n
        self.rate = cc.fired / cc.n
        self.base_l0 = float(self.rate[: self.n_small].sum())
        self._quads: dict[int, tuple] = {}

    def change(self, moves) -> tuple[float, float]:
        """(MSE, L0) of the small SAE with these moves applied, before any refit."""
        if not moves:
            return self.base_mse, self.base_l0
        parts = [self.elements(m) for m in moves]
        pos, sign = torch.cat([p for p, _ in parts]), torch.cat([s for _, s in parts])
        mse = self.base_mse + 2 * float(sign @ self.lin[pos]) + self.cc.quadratic(pos, sign)
        return mse, self.base_l0 - float(sign @ self.rate[pos])

    def _arrays(self, moves) -> tuple:
        key = id(moves)
        if key not in self._quads:
            arrays = _move_arrays(self, moves)
            mstart, melem, msign, elem_move, _ = arrays
            quad = torch.zeros(len(moves), dtype=torch.float64)
            args = [a.numpy() for a in self.cc.kernel_codes()]
            load("codes.cofire_cpu").move_quads(*args, self.V.numpy(), 1.0 / self.cc.n, mstart.numpy(),
                                                melem.numpy(), msign.numpy(), elem_move.numpy(),
                                                quad.numpy())  # fmt: skip
            seg = torch.repeat_interleave(torch.arange(len(moves)), torch.diff(mstart))
            lin = torch.zeros(len(moves), dtype=torch.float64).index_add_(0, seg, msign * self.lin[melem])
            dl0 = -torch.zeros(len(moves), dtype=torch.float64).index_add_(0, seg, msign * self.rate[melem])
            self._quads[key] = (moves, arrays, 2 * lin + quad, dl0)
        return self._quads[key][1:]

    def greedy(self, moves, lam: float) -> list[int]:
        """frontier.greedy_moves on this form: the moves' indices in the order applied."""
        if not moves:
            return []
        arrays, base, dl0 = self._arrays(moves)
        picks, _ = self.cc.greedy(*arrays, base + lam * dl0)
        return picks.tolist()

    def refit(self, cols: torch.Tensor, ridge: float, tol: float = 1e-9) -> tuple[torch.Tensor, float]:
        """The least-squares decoder [m + 1, d] on the codes `cols` (into the K) and a constant,
        ridge-pulled to the current rows as NormalEquations.solve, by CG (fit.cg: to residual
        `tol`, or the objective within about tol / 10 of its minimum); and its MSE."""
        cc, m = self.cc, len(cols)
        codes = cc.subset(cols)
        diag = torch.cat([cc.sq[cols], torch.tensor([float(cc.n)], dtype=torch.float64)])
        lam = ridge * float(diag[:m].mean().clamp_min(1e-12)) if m else 0.0
        reg = torch.full((m + 1,), lam, dtype=torch.float64)
        reg[-1] = 0.0
        B = torch.cat([cc.B[cols], cc.B[-1:]])
        target = torch.cat([self.V[cols], torch.zeros(1, self.V.shape[1], dtype=torch.float64)])
        x0 = torch.cat([self.V[cols], self.small.b_dec.detach().double().cpu()[None]])
        constant = cc.sxx + lam * float(target.pow(2).sum())
        sol, _ = solve_cg(codes, B + reg[:, None] * target, diag, reg, x0, tol=tol, max_iter=2000,
                          mse_tol=tol / 10, constant=constant)  # fmt: skip
        AD = codes.gram_times(sol)
        mse = (cc.sxx - 2 * float((sol * B).sum()) + float((sol * AD).sum())) / cc.n
        return sol, mse


class SparseMarginalGram:
    """measure.gram.MarginalGram's greedy and mse_of from the donor candidates' codes over the
    tokens (CodeColumns with base the small SAE, one part: the donor's `features`)."""

    algorithm = "sparse co-firing form"

    def __init__(self, cc: CodeColumns, features: torch.Tensor):
        self.cc, self.features, self.n_tokens = cc, features.cpu(), cc.n
        self.linear = cc.lin / cc.n
        self.base_mse = cc.sse / cc.n
        self.diag = cc.sq / cc.n * cc.V.pow(2).sum(1)
        m = len(self.features)
        ar = torch.arange(m)
        self._arrays = (torch.arange(m + 1), ar, torch.ones(m, dtype=torch.float64), ar,
                        torch.ones(m, dtype=torch.float64))  # fmt: skip

    def greedy(self, n: int | None = None) -> torch.Tensor:
        """selection.greedy_order on this form: positions into `features`, int64 [k]."""
        picks, _ = self.cc.greedy(*self._arrays, self.diag - 2 * self.linear)
        return picks if n is None else picks[:n]

    def mse_of(self, order: torch.Tensor) -> torch.Tensor:
        """MSE after inserting the first k of `order` (positions), k = 0..len: float64 [len + 1]."""
        order = torch.as_tensor(order, dtype=torch.int64)
        _, steps = self.cc.greedy(*self._arrays, self.diag - 2 * self.linear, forced=order)
        return self.base_mse + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
