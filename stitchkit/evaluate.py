"""Measuring SAEs over activation streams (units: see stitchkit.sae).

- `evaluate`: MSE, normalised MSE, L0, L1, dead features of one SAE.
- `marginal_delta_mse`: the exact MSE change from inserting each donor feature alone into a base
  SAE, for all candidates in one pass.
- `active_inactive_mse`: two SAEs' MSE on the tokens where each feature is active vs inactive.
- `path_metrics`: exact (n_features, MSE, L0) after every step of a sequence of insertions and
  removals (insertion curves, interpolation), in one pass, without building the SAEs.
- `swap_delta`: the exact dMSE and dL0 of applying each swap group alone.
- `marginal_gram`: the quadratic form behind all of these (greedy selection uses it).
- `activation_similarity`: co-activation cosine between the features of two SAEs.

`acts` is anything `stitchkit.activations.as_activations` takes (a tensor [n, d_in], a list of
batches, a callable returning batches). Sums are kept in float64; per-batch products are in the
SAE's dtype. An inserted feature's activation is its value in its own SAE, and its decoder row
is added to the base reconstruction: SAE*(x) = SAE_base(x) + f_donor,j(x) W_dec_donor,j, which
is exactly what `SAE.from_features` builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .activations import ActsLike, as_activations
from .errors import InvalidArgumentError, ShapeError
from .kernels import compiled
from .kernels.dispatch import memory_budget, use_cpu_fast_paths, use_kernels
from .kernels.sparse_codes import DENSE_DECODE_DTYPES, coactivation, decode_nonzeros, nonzeros_cpu
from .sae import SAE, check_same_input, feature_index
from .similarity import MaxCosine

Progress = Callable[[int], None] | None


@dataclass
class Metrics:
    """Metrics of one SAE over a stream of tokens.

    mse:            squared error summed over d_in, mean over tokens.
    normalized_mse: mse / mean |x - mean(x)|^2 (fraction of variance unexplained).
    l0:             active features per token, mean over tokens.
    l1:             sum of features per token, mean over tokens (no coefficient).
    dead_fraction:  fraction of features that never fired on these tokens.
    frequency:      float64 [d_sae], fraction of tokens on which each feature fired.
    """

    n_tokens: int
    mse: float
    normalized_mse: float
    l0: float
    l1: float
    dead_fraction: float
    frequency: torch.Tensor


class _Variance:
    """Streaming mean |x - mean(x)|^2 in float64 (the normalised-MSE denominator)."""

    def __init__(self, d_in: int, device: torch.device):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_x2 = 0.0

    def add(self, x: torch.Tensor) -> None:
        xd = x.double()
        self.sum_x += xd.sum(0)
        self.sum_x2 += xd.pow(2).sum().item()
        self.n += x.shape[0]

    def value(self) -> float:
        mean = self.sum_x / self.n
        v = self.sum_x2 / self.n - mean.pow(2).sum().item()
        return v if v > 0 else float("nan")


def _row_chunks(x: torch.Tensor, width: int) -> list[torch.Tensor]:
    """Split a batch by rows so that a [rows, width] fp32 temporary stays within the memory budget."""
    rows = max(1, memory_budget(x.device) // max(4 * width, 1))
    return list(x.split(rows)) if x.shape[0] > rows else [x]


def _chunks(sae: SAE, acts: ActsLike, width: int, progress: Progress = None):
    """The batches of `acts` on `sae`'s device, split so a [rows, width] fp32 temporary fits the
    memory budget; progress(tokens so far) after each batch."""
    n = 0
    for batch in as_activations(acts).batches(sae.d_in, sae.device):
        for x in _row_chunks(batch, width):
            yield x
            n += x.shape[0]
        if progress is not None:
            progress(n)


def _codes(donor: SAE, x: torch.Tensor, features: torch.Tensor, like: SAE) -> torch.Tensor:
    """The donor's `features` on x (their values in the donor SAE), on `like`'s device and dtype."""
    return donor.encode_features(x.to(donor.device), features.to(donor.device)).to(like.device, like.dtype)


def _empty(sae: SAE, n: int, fn: str) -> None:
    if n == 0:
        raise InvalidArgumentError(f"{fn}: the activation stream for SAE {sae.name!r} was empty")


def forward_stats(sae: SAE, x: torch.Tensor):
    """The fused Triton forward of an eval-mode SAE on a batch: per-token squared error, L1, L0 and
    the sparse codes (kernels.sae_forward.ForwardStats)."""
    from .kernels.sae_forward import sae_forward_triton

    topk = sae.activation == "topk"
    th = None if sae.activation in ("relu", "topk") else sae.threshold.expand(sae.d_sae)
    return sae_forward_triton(
        x,
        sae.W_enc.detach(),
        sae.b_enc.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        th,
        sae.apply_b_dec_to_input,
        k=sae.k if topk else None,
    )


@torch.no_grad()
def evaluate(sae: SAE, acts: ActsLike, *, progress: Progress = None) -> Metrics:
    """Stream `acts` through `sae` and return its Metrics.

    Sums are kept in float64, so the result does not depend on how tokens are batched beyond
    float32 rounding of each batch. `progress(n_tokens)` is called after every batch.
    """
    var = _Variance(sae.d_in, sae.device)
    sq_err = l0 = l1 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    stream = as_activations(acts, what="activation batch")
    fused = use_kernels(sae.device) and not sae.training
    for x in stream.batches(sae.d_in, sae.device):
        if fused:  # never writes the dense [n, d_sae] features
            st = forward_stats(sae, x)
            sq_err += st.sq_err.double().sum().item()
            l0 += st.l0.double().sum().item()
            l1 += st.l1.double().sum().item()
            ok = st.indices >= 0
            fired += torch.bincount(st.indices[ok].long(), minlength=sae.d_sae).double()
        else:
            f = sae.encode(x)
            nz = (
                nonzeros_cpu(f) if use_cpu_fast_paths(f.device) and sae.dtype in DENSE_DECODE_DTYPES else None
            )
            if nz is not None:  # each statistic from f's nonzeros, not from passes over all of f
                x_hat = decode_nonzeros(nz, sae.W_dec, sae.b_dec)
                sq_err += (x_hat - x.to(sae.dtype)).double().pow(2).sum().item()
                l0 += len(nz.values)
                l1 += nz.values.double().sum().item()
                fired += torch.bincount(nz.cols, minlength=sae.d_sae).double()
            else:
                err = (sae.decode(f) - x.to(sae.dtype)).double()
                sq_err += err.pow(2).sum().item()
                active = f != 0
                l0 += active.sum().item()
                l1 += f.double().sum().item()
                fired += active.sum(0).double()
        var.add(x)
        if progress is not None:
            progress(var.n)
    n = var.n
    _empty(sae, n, "evaluate")
    mse = sq_err / n
    return Metrics(
        n_tokens=n,
        mse=mse,
        normalized_mse=mse / var.value(),
        l0=l0 / n,
        l1=l1 / n,
        dead_fraction=(fired == 0).double().mean().item() if sae.d_sae else 0.0,
        frequency=(fired / n).cpu(),
    )


@torch.no_grad()
def marginal_delta_mse(
    base: SAE, donor: SAE, acts: ActsLike, features=None, *, progress: Progress = None
) -> torch.Tensor:
    """The exact change in `base`'s MSE from inserting each donor feature alone.

    features: donor feature indices (default: all), m of them. Returns float64 [m] on the CPU:
    dMSE_j = E[f_j^2 |w_j|^2 - 2 f_j (r . w_j)], with r = x - base(x), f_j the donor feature's
    activation in the donor SAE and w_j its decoder row; negative = the insertion helps.
    Units: MSE (squared error summed over d_in, mean over tokens). One pass over `acts`;
    memory O(batch x m) (batches are split to fit).
    """
    check_same_input(base, donor, "marginal_delta_mse")
    idx = feature_index(donor, features, "marginal_delta_mse")
    w = donor.W_dec.detach()[idx].to(base.device, base.dtype)
    w_sq = w.double().pow(2).sum(1)
    acc = torch.zeros(len(idx), dtype=torch.float64, device=base.device)
    n = 0
    for x in _chunks(base, acts, len(idx), progress):
        r = x.to(base.dtype) - base(x)
        f = _codes(donor, x, idx, base)
        acc += f.double().pow(2).sum(0) * w_sq - 2 * (f * (r @ w.T)).double().sum(0)
        n += x.shape[0]
    _empty(base, n, "marginal_delta_mse")
    return (acc / n).cpu()


@dataclass
class ActiveInactiveMSE:
    """Per feature j of `large` (m of them, float64 [m] each; NaN where there is no such token):
    MSE of each SAE on the tokens where j is active, and where it is inactive.

    n_active: int64 [m] tokens on which j fired. `.summary()` averages over the features with
    both active and inactive tokens.
    """

    features: torch.Tensor
    n_active: torch.Tensor
    n_tokens: int
    small_active: torch.Tensor
    large_active: torch.Tensor
    small_inactive: torch.Tensor
    large_inactive: torch.Tensor

    @property
    def gap_active(self) -> torch.Tensor:
        """large - small MSE on active tokens [m] (negative: the large SAE does better there)."""
        return self.large_active - self.small_active

    @property
    def gap_inactive(self) -> torch.Tensor:
        return self.large_inactive - self.small_inactive

    def summary(self) -> dict[str, float]:
        ok = (self.n_active > 0) & (self.n_active < self.n_tokens)
        mean = lambda t: float(t[ok].mean()) if ok.any() else float("nan")  # noqa: E731
        return dict(
            n_features=int(ok.sum()),
            small_active=mean(self.small_active),
            large_active=mean(self.large_active),
            small_inactive=mean(self.small_inactive),
            large_inactive=mean(self.large_inactive),
            gap_active=mean(self.gap_active),
            gap_inactive=mean(self.gap_inactive),
        )


@torch.no_grad()
def active_inactive_mse(small: SAE, large: SAE, acts: ActsLike, features=None) -> ActiveInactiveMSE:
    """MSE of `small` and of `large` on the tokens where each feature of `large` (default: all;
    pass the novel ones to reproduce the reference work) is active vs inactive. One pass."""
    check_same_input(small, large, "active_inactive_mse")
    idx = feature_index(large, features, "active_inactive_mse")
    m = len(idx)
    dev = large.device
    n_act = torch.zeros(m, dtype=torch.float64, device=dev)
    s_act = torch.zeros(m, dtype=torch.float64, device=dev)
    l_act = torch.zeros(m, dtype=torch.float64, device=dev)
    s_tot = l_tot = 0.0
    n = 0
    for x in _chunks(large, acts, m):
        e_s = (small(x.to(small.device)).to(dev) - x).double().pow(2).sum(1)
        e_l = (large(x) - x).double().pow(2).sum(1)
        active = (large.encode_features(x, idx) > 0).double()
        n_act += active.sum(0)
        s_act += e_s @ active
        l_act += e_l @ active
        s_tot += e_s.sum().item()
        l_tot += e_l.sum().item()
        n += x.shape[0]
    _empty(large, n, "active_inactive_mse")
    n_in = n - n_act
    div = lambda a, b: (a / b).masked_fill(b == 0, float("nan")).cpu()  # noqa: E731
    return ActiveInactiveMSE(
        features=idx.cpu(),
        n_active=n_act.long().cpu(),
        n_tokens=n,
        small_active=div(s_act, n_act),
        large_active=div(l_act, n_act),
        small_inactive=div(s_tot - s_act, n_in),
        large_inactive=div(l_tot - l_act, n_in),
    )


@dataclass
class PathMetrics:
    """Metrics after each step of a path; entry 0 is the base SAE itself. float64 [S + 1] each,
    on the CPU: n_features, mse, normalized_mse, l0 (units: see stitchkit.sae)."""

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


Step = tuple[Sequence[int] | torch.Tensor, Sequence[int] | torch.Tensor]


@torch.no_grad()
def path_metrics(
    base: SAE, donor: SAE, steps: Sequence[Step], acts: ActsLike, *, progress: Progress = None
) -> PathMetrics:
    """Exact metrics of the SAE after each step of a path from `base`, in one pass.

    steps: [(donor features added, base features removed)], applied cumulatively. The SAE after
    step s is SAE.from_features([(base, kept), (donor, added so far)], base=base); its
    reconstruction is updated in float64 by each step's added minus removed decoder terms, so
    no SAE is built. A base feature may be removed once, a donor feature added once.
    """
    check_same_input(base, donor, "path_metrics")
    dev = base.device
    adds, rems = [], []
    for s, (add, rem) in enumerate(steps):
        adds.append(feature_index(donor, add, f"path_metrics: steps[{s}] added", allow_empty=True))
        rems.append(feature_index(base, rem, f"path_metrics: steps[{s}] removed", allow_empty=True))
    for name, parts, sae in (("added", adds, donor), ("removed", rems, base)):
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        if len(flat) != len(torch.unique(flat)):
            raise InvalidArgumentError(
                f"path_metrics: a feature of SAE {sae.name!r} is {name} twice along the path"
            )
    used = torch.unique(torch.cat(adds)) if adds else torch.empty(0, dtype=torch.int64, device=dev)
    # Positions of each step's donor features within `used`.
    pos = [torch.searchsorted(used, a) for a in adds]
    w_add = donor.W_dec.detach()[used].to(dev, base.dtype)
    w_base = base.W_dec.detach()
    n_steps = len(steps)
    sq = torch.zeros(n_steps + 1, dtype=torch.float64)
    l0 = torch.zeros(n_steps + 1, dtype=torch.float64)
    var = _Variance(base.d_in, dev)
    for x in _chunks(base, acts, base.d_sae + len(used), progress):
        fb = base.encode(x)
        fd = _codes(donor, x, used, base)
        xd = x.double()
        x_hat = base.decode(fb).double()
        nnz = float((fb != 0).sum())
        sq[0] += (xd - x_hat).pow(2).sum().item()
        l0[0] += nnz
        for s in range(n_steps):
            if len(pos[s]):
                x_hat += (fd[:, pos[s]] @ w_add[pos[s]]).double()
                nnz += float((fd[:, pos[s]] != 0).sum())
            if len(rems[s]):
                x_hat -= (fb[:, rems[s]] @ w_base[rems[s]]).double()
                nnz -= float((fb[:, rems[s]] != 0).sum())
            sq[s + 1] += (xd - x_hat).pow(2).sum().item()
            l0[s + 1] += nnz
        var.add(x)
    _empty(base, var.n, "path_metrics")
    sizes = [base.d_sae]
    for a, r in zip(adds, rems):
        sizes.append(sizes[-1] + len(a) - len(r))
    mse = sq / var.n
    return PathMetrics(
        n_features=torch.tensor(sizes, dtype=torch.float64),
        mse=mse,
        normalized_mse=mse / var.value(),
        l0=l0 / var.n,
        n_tokens=var.n,
    )


@torch.no_grad()
def swap_delta(
    base: SAE, donor: SAE, groups: Sequence[Step], acts: ActsLike, *, progress: Progress = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact change in MSE and in L0 from applying each swap alone to `base`.

    groups: [(donor features added, base features removed)] (e.g. SwapGroup.children/.parents).
    With u_g = sum_children f_c w_c - sum_parents f_p w_p (the change of the reconstruction),
    dMSE_g = E[|u_g|^2 - 2 r . u_g]. Returns (dMSE float64 [G], dL0 float64 [G]) on the CPU.
    One pass; small groups are handled together through their within-group feature pairs,
    large ones (> 32 members) by a Gram matrix each.
    """
    check_same_input(base, donor, "swap_delta")
    dev = base.device
    G = len(groups)
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
    if G == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty.clone()
    # Members: every (source, feature) of every group; sign +1 for children, -1 for parents.
    m_add, m_rem = torch.cat(add_idx), torch.cat(rem_idx)
    member_gid = torch.cat([torch.cat(gid_add), torch.cat(gid_rem)])
    sign = torch.cat([torch.ones(len(m_add), device=dev), -torch.ones(len(m_rem), device=dev)]).to(base.dtype)
    W = torch.cat([donor.W_dec.detach()[m_add].to(dev, base.dtype), base.W_dec.detach()[m_rem]])
    # Within-group pairs (a, b) of members for the small groups, a Gram per large group.
    sizes = torch.bincount(member_gid, minlength=G)
    order = torch.argsort(member_gid, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    small_pairs_a, small_pairs_b, big = [], [], []
    for g in range(G):
        mem = order[starts[g] : starts[g] + sizes[g]]
        if len(mem) > 32:
            big.append((g, mem))
        else:
            small_pairs_a.append(mem.repeat_interleave(len(mem)))
            small_pairs_b.append(mem.repeat(len(mem)))
    pa = torch.cat(small_pairs_a) if small_pairs_a else torch.empty(0, dtype=torch.int64, device=dev)
    pb = torch.cat(small_pairs_b) if small_pairs_b else torch.empty(0, dtype=torch.int64, device=dev)
    pair_w = (sign[pa] * sign[pb] * (W[pa] * W[pb]).sum(1)).double()
    big_w = [(g, mem, (sign[mem, None] * sign[None, mem] * (W[mem] @ W[mem].T)).double()) for g, mem in big]

    lin = torch.zeros(len(member_gid), dtype=torch.float64, device=dev)
    quad = torch.zeros(G, dtype=torch.float64, device=dev)
    nnz = torch.zeros(len(member_gid), dtype=torch.float64, device=dev)
    n = 0
    for x in _chunks(base, acts, len(member_gid) + max(base.d_sae, 1), progress):
        r = x.to(base.dtype) - base(x)
        F = torch.cat(
            [
                _codes(donor, x, m_add, base),
                base.encode_features(x, m_rem),
            ],
            dim=1,
        )
        lin += (F * (r @ W.T)).double().sum(0)
        nnz += (F != 0).double().sum(0)
        for chunk in torch.arange(len(pa), device=dev).split(max(1, (64 << 20) // (4 * x.shape[0]))):
            co = (F[:, pa[chunk]] * F[:, pb[chunk]]).double().sum(0)
            quad.index_add_(0, member_gid[pa[chunk]], co * pair_w[chunk])
        for g, mem, ww in big_w:
            Fg = F[:, mem].double()
            quad[g] += (Fg.T @ Fg * ww).sum()
        n += x.shape[0]
    _empty(base, n, "swap_delta")
    lin_g = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, member_gid, lin * sign.double())
    dl0 = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, member_gid, nnz * sign.double())
    return ((quad - 2 * lin_g) / n).cpu(), (dl0 / n).cpu()


@dataclass
class MarginalGram:
    """The quadratic form of inserting any subset S of m donor features into a base SAE:
    MSE(S) = base_mse - 2 sum_{j in S} linear_j + sum_{i, j in S} gram_ij.

    linear: float64 [m], E[f_j (r . w_j)];  gram: float64 [m, m], E[f_i f_j] (w_i . w_j);
    base_mse: the base SAE's MSE; features: int64 [m] donor indices. Marginal dMSE_j given S
    already inserted: gram_jj - 2 (linear_j - sum_{i in S} gram_ij).
    """

    features: torch.Tensor
    linear: torch.Tensor
    gram: torch.Tensor
    base_mse: float
    n_tokens: int

    def mse_of(self, order: torch.Tensor) -> torch.Tensor:
        """MSE after inserting the first k of `order` (positions into `features`), k = 0..len:
        float64 [len + 1]."""
        order = torch.as_tensor(order, dtype=torch.int64)
        g = self.gram[order][:, order]
        # Each new feature j adds g_jj + 2 sum_{i before j} g_ij - 2 linear_j.
        step = g.diagonal() + 2 * torch.tril(g, -1).sum(1) - 2 * self.linear[order]
        return self.base_mse + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(step, 0)])


@torch.no_grad()
def marginal_gram(base: SAE, donor: SAE, acts: ActsLike, features=None) -> MarginalGram:
    """Accumulate the MarginalGram of `donor`'s `features` over `acts` in one pass.
    Memory O(m^2) (float64): for up to ~20k candidates."""
    check_same_input(base, donor, "marginal_gram")
    idx = feature_index(donor, features, "marginal_gram")
    dev = base.device
    w = donor.W_dec.detach()[idx].to(dev, base.dtype)
    lin = torch.zeros(len(idx), dtype=torch.float64, device=dev)
    co = torch.zeros(len(idx), len(idx), dtype=torch.float64, device=dev)
    sq = 0.0
    n = 0
    for x in _chunks(base, acts, len(idx)):
        r = x.to(base.dtype) - base(x)
        f = _codes(donor, x, idx, base)
        lin += (f * (r @ w.T)).double().sum(0)
        co += (f.T @ f).double()
        sq += r.double().pow(2).sum().item()
        n += x.shape[0]
    _empty(base, n, "marginal_gram")
    gram = co / n * (w @ w.T).double()
    return MarginalGram(idx.cpu(), (lin / n).cpu(), gram.cpu(), sq / n, n)


@torch.no_grad()
def activation_similarity(query: SAE, key: SAE, acts: ActsLike):
    """For each feature of `query`, the feature of `key` whose activations are most alike:
    cosine of the two activation vectors over tokens, E[f_i g_j] / sqrt(E[f_i^2] E[g_j^2]).

    Returns MaxCosine(values float32 [Fq], indices int64 [Fq]) on the CPU; a query feature that
    never fires (or a key with no live feature) gets NaN and index -1. The co-activation matrix
    [Fq, Fk] is accumulated in float64 over one pass per block of query features that fits the
    memory budget (one pass in all at demo sizes). On CUDA with the csrc extension built, the
    co-activations come from both SAEs' sparse codes (fused encode + atomic co-activation kernel).
    """
    check_same_input(query, key, "activation_similarity")
    dev = query.device
    block = max(1, memory_budget(dev) // (8 * max(key.d_sae, 1)))
    stream = as_activations(acts, multi_pass=query.d_sae > block, what="acts")
    values = torch.full((query.d_sae,), float("nan"), dtype=torch.float32)
    indices = torch.full((query.d_sae,), -1, dtype=torch.int64)
    codes_path = (
        use_kernels(dev)
        and compiled.available()
        and block >= query.d_sae
        and not (query.training or key.training)
    )
    for start in range(0, query.d_sae, block):
        idx = torch.arange(start, min(start + block, query.d_sae), device=dev)
        co = torch.zeros(len(idx), key.d_sae, dtype=torch.float64, device=dev)
        q2 = torch.zeros(len(idx), dtype=torch.float64, device=dev)
        k2 = torch.zeros(key.d_sae, dtype=torch.float64, device=dev)
        n = 0
        for x in stream.batches(query.d_in, dev):
            if codes_path:  # co-activation straight from the sparse codes (csrc kernel)
                cq, ck = forward_stats(query, x), forward_stats(key, x.to(key.device))
                co += coactivation(
                    cq.indices, cq.values, ck.indices, ck.values, query.d_sae, key.d_sae
                ).double()
                for acc, c in ((q2, cq), (k2, ck)):
                    ok = c.indices >= 0
                    acc.index_add_(0, c.indices[ok].long(), c.values[ok].double().pow(2))
            else:
                f = query.encode_features(x, idx)
                g = key.encode(x.to(key.device)).to(dev, f.dtype)
                co += (f.T @ g).double()
                q2 += f.double().pow(2).sum(0)
                k2 += g.double().pow(2).sum(0)
            n += x.shape[0]
        _empty(query, n, "activation_similarity")
        cos = co / (q2.sqrt()[:, None] * k2.sqrt()[None, :])
        cos = cos.nan_to_num(nan=-float("inf"))
        best, arg = cos.max(1)
        ok = torch.isfinite(best)
        values[idx[ok].cpu()] = best[ok].float().cpu()
        indices[idx[ok].cpu()] = arg[ok].cpu()
    return MaxCosine(values, indices)


@torch.no_grad()
def splice_similarity(
    source, sae: SAE, texts: list[str], *, output_hook: str | None = None
) -> dict[str, float]:
    """Downstream effect of splicing `sae` into `source`'s model at its hook (x -> SAE(x) there).

    Every model: the attention-masked mean of the last block's output (`output_hook`, default
    blocks.{n_layers-1}.hook_resid_post), which is how sentence-transformers pools an embedding
    model (the embedded default); returns the mean and minimum cosine between each text's pooled
    output with and without the splice, and the mean cosine with the site zero-ablated.
    A causal LM (source.is_causal_lm) also gets next-token CE loss: clean, spliced, zero-ablated,
    and ce_recovered = (L_zero - L_spliced) / (L_zero - L_clean) (1 = the SAE loses nothing).
    source: a stitchkit.activations.LensSource.
    """
    if sae.d_in != source.d_in:
        raise ShapeError(
            f"splice_similarity: SAE {sae.name!r} has d_in={sae.d_in}, the model's site has {source.d_in}"
        )
    if sae.hook_name and sae.hook_name != source.hook_name:
        raise InvalidArgumentError(
            f"splice_similarity: SAE {sae.name!r} reads hook {sae.hook_name!r}, "
            f"the source is at {source.hook_name!r}"
        )
    model = source.model
    out_hook = output_hook or f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    dev = next(model.parameters()).device
    sae = sae.to(dev)
    causal = source.is_causal_lm

    def run(ids, mask, replace):
        got = {}

        def grab(x, hook):
            got["x"] = x
            return x

        hooks = [(out_hook, grab)]
        if replace is not None:
            hooks.insert(0, (source.hook_name, lambda x, hook: replace(x).to(x.dtype)))
        rt = dict(return_type="loss", loss_per_token=True) if causal else dict(return_type=None)
        loss = model.run_with_hooks(ids, fwd_hooks=hooks, attention_mask=mask, **rt)
        m = mask[..., None].to(got["x"].dtype)
        pooled = (got["x"] * m).sum(1) / m.sum(1)
        if not causal:
            return pooled, None
        valid = mask[:, 1:].to(loss.dtype)
        return pooled, ((loss * valid).sum().item(), valid.sum().item())

    cos, zero, ce = [], [], {"clean": [0.0, 0.0], "spliced": [0.0, 0.0], "zero": [0.0, 0.0]}
    for s in range(0, len(texts), source.batch_size):
        ids, mask = source.tokenize(texts[s : s + source.batch_size])
        outs = {
            "clean": run(ids, mask, None),
            "spliced": run(ids, mask, lambda x: sae(x.to(sae.dtype))),
            "zero": run(ids, mask, torch.zeros_like),
        }
        cos.append(torch.nn.functional.cosine_similarity(outs["clean"][0], outs["spliced"][0], dim=1).cpu())
        zero.append(torch.nn.functional.cosine_similarity(outs["clean"][0], outs["zero"][0], dim=1).cpu())
        if causal:
            for key, (_, (total, count)) in outs.items():
                ce[key][0] += total
                ce[key][1] += count
    if not cos:
        raise InvalidArgumentError("splice_similarity: no texts given")
    c, z = torch.cat(cos), torch.cat(zero)
    res = dict(
        mean_cos=float(c.mean()), min_cos=float(c.min()), zero_ablation_cos=float(z.mean()), n_texts=len(c)
    )
    if causal:
        loss = {k: t / max(n, 1) for k, (t, n) in ce.items()}
        gap = loss["zero"] - loss["clean"]
        res.update(
            ce_clean=loss["clean"],
            ce_spliced=loss["spliced"],
            ce_zero_ablated=loss["zero"],
            ce_recovered=(loss["zero"] - loss["spliced"]) / gap if gap else float("nan"),
        )
    return res
