"""Feature cards: each feature's top-activating tokens, activation histogram, firing statistics and
samples from its activation quantile bands, exact, from one streaming pass.

`FeatureCards(sae)` is an accumulator (measure.accumulator) that reads only the nonzeros of the
SAE's features (Batch.codes on the CPU route, else the nonzeros of Batch.features), and
`feature_cards(sae, acts)` runs it alone. Every statistic is of the fp32 feature values (an fp32
SAE's own; a float64 SAE's rounded to fp32), and tokens are named by their global row in the
stream (Batch.offset + place in the batch). What makes one streaming pass exact:
- top-k: rows are ordered by (value descending, row ascending), a total order, so "the top k" is
  one set and ties go to the smaller row. Each chunk's nonzeros are filtered against the
  feature's k-th best (value, row) as of its last compaction (nothing at or below it can enter
  the final k), the survivors appended to a per-feature buffer of 2k, and a full buffer cut back
  to its k best (a sort of that feature's 3k at most): after warm-up almost nothing survives.
- histogram: fixed log-spaced bins (4 a decade over [1e-4, 1e4), an underflow bin below and an
  overflow bin above), int64 counts; the sum of activations is kept per bin in float64, where it
  is exact (a bin spans under two binades, so the fp32 values of a bin are multiples of one ulp
  and up to 2^28 of them add exactly in float64) and so independent of chunking, ranks and
  merge order; the under- and overflow bins' sums round as any float64 sum.
- samples: each (feature, bin) keeps the `samples` rows of smallest hash, where hash(row) is the
  row-th output of splitmix64 seeded with `seed` (a bijection of the int64 row, read as a signed
  int64). The bottom-s of a union is the bottom-s of the union of bottom-s's, so merging is exact;
  a quantile band is a run of bins, and its bottom-s by hash (a uniform sample of its tokens
  without replacement) comes from its bins' bottom-s's. The hash is inverted to give the rows.
Memory per feature (k = 20, 34 bins, samples = 2): 500 bytes of top-k buffer, 544 of histogram
and bin sums, 816 of samples: 1,860 bytes (`state_bytes`), 183 MB at 98,304 features.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch

from .. import dist
from ..data.streams import ActsLike
from ..errors import InvalidArgumentError
from ..ops.dispatch import cpu_screen, sae_route
from ..sae.model import SAE
from .accumulator import Batch, Progress, check_tokens, measure

# splitmix64 (Steele, Lea, Flood 2014): the golden-ratio increment and the finaliser's multipliers.
GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
INT64_MAX = 2**63 - 1


def _s64(c: int) -> int:
    """The unsigned 64-bit integer c as the int64 with the same bits."""
    c %= 2**64
    return c - 2**64 if c >= 2**63 else c


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _unshift(y: torch.Tensor, s: int) -> torch.Tensor:
    """The z with z ^ (z >>> s) == y."""
    z, t = y, s
    while t < 64:
        z = z ^ _shr(y, t)
        t += s
    return z


def row_hash(rows: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """hash(row) int64 [..]: the row-th output of splitmix64 seeded with `seed` (mix(seed + (row +
    1) * GOLDEN), arithmetic mod 2^64), a bijection of int64 rows. int64 products wrap."""
    z = (rows + 1) * _s64(GOLDEN) + _s64(seed)
    z = (z ^ _shr(z, 30)) * _s64(MIX1)
    z = (z ^ _shr(z, 27)) * _s64(MIX2)
    return z ^ _shr(z, 31)


def row_of_hash(h: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The rows whose row_hash is h (row_hash's inverse)."""
    z = _unshift(h, 31) * _s64(pow(MIX2, -1, 2**64))
    z = _unshift(z, 27) * _s64(pow(MIX1, -1, 2**64))
    z = _unshift(z, 30)
    return (z - _s64(seed)) * _s64(pow(GOLDEN, -1, 2**64)) - 1


def hist_edges(decades: tuple[int, int] = (-4, 4), bins_per_decade: int = 4) -> torch.Tensor:
    """The histogram's bin edges, fp32 [decades * bins_per_decade + 1], 10^lo .. 10^hi: bin 0
    holds values below edges[0], bin j (1 <= j <= len(edges) - 1) [edges[j-1], edges[j]), the
    last bin values from edges[-1] up."""
    lo, hi = decades
    n = (hi - lo) * bins_per_decade
    exps = [lo + j / bins_per_decade for j in range(n + 1)]
    return torch.tensor([10.0**e for e in exps], dtype=torch.float64).float()


def _ordered(v: torch.Tensor) -> torch.Tensor:
    """fp32 values as int64 in the same order (their bits, negative ones' magnitude bits flipped)."""
    bits = v.contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _group_rank(groups: torch.Tensor) -> torch.Tensor:
    """Each entry's place within its run of equal `groups` (sorted: runs contiguous)."""
    at = torch.arange(len(groups), device=groups.device)
    new = torch.ones_like(groups, dtype=torch.bool)
    new[1:] = groups[1:] != groups[:-1]
    return at - torch.where(new, at, 0).cummax(0).values


def _best_per_group(groups, values, rows, k):
    """The entries that are among the k best of their group by (value desc, row asc): (groups,
    values, rows, place in group) of those, groups ascending. groups < 2^31."""
    o = torch.argsort(rows, stable=True)
    key = (groups[o] << 32) | ((2**31 - 1) - _ordered(values[o]))
    o = o[torch.argsort(key, stable=True)]
    g = groups[o]
    rank = _group_rank(g)
    keep = rank < k
    return g[keep], values[o][keep], rows[o][keep], rank[keep]


def _smallest_per_group(groups, hashes, s):
    """The order of entries that are among the s smallest hashes of their group, and their place
    in the group (groups ascending, then hashes)."""
    o = torch.argsort(hashes, stable=True)
    o = o[torch.argsort(groups[o], stable=True)]
    rank = _group_rank(groups[o])
    keep = rank < s
    return o[keep], rank[keep]


def _rowwise_best(values: torch.Tensor, rows: torch.Tensor, k: int):
    """Each row's k best (value desc, row asc) of values, rows [F, m] (empty: -inf, -1)."""
    o = torch.argsort(rows, dim=1, stable=True)
    v, r = values.gather(1, o), rows.gather(1, o)
    o = torch.argsort(v, dim=1, descending=True, stable=True)[:, :k]
    return v.gather(1, o), r.gather(1, o)


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """torch on one CPU thread within the block. An update is some 60 small ops on a batch's
    nonzeros; right after the encode, each op's wake of the other threads costs about a
    millisecond on the 2-core CPU: 13 updates at 98,304 features took 4.9-6.7 s on 2 threads,
    0.31 s on one (bench/cards_overhead.py)."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class CardStats:
    """Each feature's card over a stream of n tokens (F features; rows: global token indices in
    the stream, 0-based; values: fp32 feature values).

    top_values:  fp32 [F, k] the k largest values, descending; ties go to the smaller row (NaN
                 past the feature's firing count).
    top_rows:    int64 [F, k] their rows (-1 where the feature fired on fewer than k rows).
    count:       int64 [F] tokens on which the feature was nonzero.
    sum:         float64 [F] sum of its values (the per-bin sums added in bin order).
    hist_edges:  fp32 [nb - 1] bin edges; hist int64 [F, nb]: bin 0 counts values below
                 hist_edges[0] (the underflow bin), bin j [hist_edges[j-1], hist_edges[j]),
                 bin nb - 1 values from hist_edges[-1] up (the overflow bin).
    band_count:  int64 [F, B] nonzeros in each quantile band: band b is the run of bins whose
                 middle lies in the feature's quantiles [b/B, (b+1)/B) (empty where one bin
                 holds more than its share).
    band_lo, band_hi: fp32 [F, B] each band's value range, from the edges of its first and last
                 nonempty bins (0 below the underflow bin, inf above the overflow bin; NaN for an
                 empty band).
    band_rows:   int64 [F, B, s] a uniform sample of the band's rows without replacement, the s of
                 smallest hash, in hash order (-1 past the band's count); band_values fp32
                 [F, B, s] their values (NaN where empty).
    """

    n: int
    top_values: torch.Tensor
    top_rows: torch.Tensor
    count: torch.Tensor
    sum: torch.Tensor
    hist_edges: torch.Tensor
    hist: torch.Tensor
    band_count: torch.Tensor
    band_lo: torch.Tensor
    band_hi: torch.Tensor
    band_rows: torch.Tensor
    band_values: torch.Tensor

    @property
    def firing_rate(self) -> torch.Tensor:
        """float64 [F]: count / n, the fraction of tokens on which each feature fired."""
        return self.count.double() / self.n

    @property
    def mean_activation(self) -> torch.Tensor:
        """float64 [F]: sum / count, each feature's mean value over the tokens it fired on (NaN
        for a feature that never fired)."""
        return self.sum / self.count.double()

    def feature(self, j: int) -> dict:
        """Feature j's card as plain Python values (for JSON): None for a mean that does not exist
        and for an empty band's range or the overflow band's open end; only the filled top rows
        and band samples."""
        c = int(self.count[j])
        rows, values = self.top_rows[j].tolist(), self.top_values[j].tolist()
        top = [(int(r), float(v)) for r, v in zip(rows, values) if r >= 0]
        bands = []
        for b in range(self.band_count.shape[1]):
            rows = [int(r) for r in self.band_rows[j, b].tolist() if r >= 0]
            lo, hi = float(self.band_lo[j, b]), float(self.band_hi[j, b])
            bands.append(dict(
                count=int(self.band_count[j, b]),
                lo=lo if math.isfinite(lo) else None,
                hi=hi if math.isfinite(hi) else None,
                rows=rows,
                values=[float(v) for v in self.band_values[j, b, : len(rows)].tolist()],
            ))  # fmt: skip
        return dict(
            feature=int(j),
            n_tokens=int(self.n),
            count=c,
            firing_rate=c / self.n,
            sum=float(self.sum[j]),
            mean_activation=float(self.sum[j]) / c if c else None,
            top_rows=[r for r, _ in top],
            top_values=[v for _, v in top],
            hist_edges=[float(e) for e in self.hist_edges.tolist()],
            hist=[int(h) for h in self.hist[j].tolist()],
            bands=bands,
        )


class FeatureCards:
    """The one-pass accumulator of CardStats for every feature of `sae` (module doc).

    k: top rows kept per feature. samples: rows sampled per quantile band (0: none). bands: the
    number of quantile bands B. decades, bins_per_decade: the histogram's range (powers of ten)
    and resolution. seed: the row hash's (the same seed, the same samples).
    Memory: state_bytes(), about (24 k + 20 + 16 nb + 12 nb samples) bytes a feature (nb bins).
    """

    def __init__(self, sae: SAE, k: int = 20, samples: int = 2, bands: int = 4, *,
                 decades: tuple[int, int] = (-4, 4), bins_per_decade: int = 4, seed: int = 0):  # fmt: skip
        if k < 1 or samples < 0 or bands < 1 or bins_per_decade < 1 or decades[1] <= decades[0]:
            raise InvalidArgumentError(
                f"FeatureCards: need k >= 1, samples >= 0, bands >= 1, bins_per_decade >= 1 and "
                f"decades (lo, hi) with lo < hi, got k={k}, samples={samples}, bands={bands}, "
                f"bins_per_decade={bins_per_decade}, decades={decades}"
            )
        self.sae, self.k, self.s, self.bands, self.seed = sae, int(k), int(samples), int(bands), int(seed)
        self.decades, self.bins_per_decade = tuple(decades), int(bins_per_decade)
        F, dev = sae.d_sae, sae.device
        self.edges = hist_edges(self.decades, self.bins_per_decade).to(dev)
        self.nb = len(self.edges) + 1
        self.n = 0
        cap = 2 * self.k
        self.top_v = torch.full((F, cap), float("-inf"), device=dev)  # unsorted; empty: -inf, -1
        self.top_r = torch.full((F, cap), -1, dtype=torch.int64, device=dev)
        self.fill = torch.zeros(F, dtype=torch.int64, device=dev)
        self.kth_v = torch.full((F,), float("-inf"), device=dev)  # the k-th best at the last cut
        self.kth_r = torch.full((F,), -1, dtype=torch.int64, device=dev)
        self.hist = torch.zeros(F, self.nb, dtype=torch.int64, device=dev)
        self.bin_sum = torch.zeros(F, self.nb, dtype=torch.float64, device=dev)
        # Per (feature, bin) slot, its min(count, s) smallest hashes and their values (unsorted).
        self.samp_h = torch.full((F * self.nb, self.s), INT64_MAX, dtype=torch.int64, device=dev)
        self.samp_v = torch.zeros(F * self.nb, self.s, device=dev)
        # The dense route's mask and nonzero lists take about an fp32 column a feature.
        self.width = F
        route = sae_route(dev, sae.dtype, eval_mode=not sae.training)
        screened = route == "cpu" and cpu_screen(dev, sae.dtype) and not sae.training
        self.reads = [] if screened else [(sae, None)]  # the screen keeps codes only

    _STATE = ("top_v", "top_r", "fill", "kth_v", "kth_r", "hist", "bin_sum", "samp_h", "samp_v")

    def state_bytes(self) -> int:
        """Bytes of the accumulator's state (all features)."""
        return sum(getattr(self, a).numel() * getattr(self, a).element_size() for a in self._STATE)

    # -- update ------------------------------------------------------------------------------

    def _nonzeros(self, batch: Batch):
        """(values fp32, local rows, cols) of the batch's nonzero features."""
        nz = batch.codes(self.sae)
        if nz is not None:
            return nz.values.float(), nz.rows, nz.cols
        f = batch.features(self.sae).detach()
        rows, cols = f.nonzero().unbind(1)
        return f[rows, cols].float(), rows, cols

    @torch.no_grad()
    def update(self, batch: Batch) -> None:
        v, rows, cols = self._nonzeros(batch)
        with _one_thread(self.hist.device):
            self._update(batch, v, rows, cols)

    def _update(self, batch: Batch, v, rows, cols) -> None:
        dev = self.hist.device
        v, rows, cols = v.to(dev), rows.to(dev) + batch.offset, cols.to(dev)
        bins = torch.bucketize(v, self.edges, right=True)
        slot = cols * self.nb + bins
        if self.s:
            self._add_samples(slot, rows, v)  # reads the counts before this batch
        self.hist.view(-1).index_add_(0, slot, torch.ones_like(slot))
        self.bin_sum.view(-1).index_add_(0, slot, v.double())
        self._add_top(cols, v, rows)
        self.n += batch.x.shape[0]

    def _add_top(self, cols, v, rows) -> None:
        kv, kr = self.kth_v[cols], self.kth_r[cols]
        keep = (v > kv) | ((v == kv) & (rows < kr))
        cols, v, rows = cols[keep], v[keep], rows[keep]
        if not len(cols):
            return
        o = torch.argsort(cols, stable=True)
        cols, v, rows = cols[o], v[o], rows[o]
        pos = self.fill[cols] + _group_rank(cols)
        cap = self.top_v.shape[1]
        fits = pos < cap
        self.top_v[cols[fits], pos[fits]] = v[fits]
        self.top_r[cols[fits], pos[fits]] = rows[fits]
        self.fill.index_add_(0, cols, torch.ones_like(cols))
        full = (self.fill > cap).nonzero().flatten()
        if len(full):  # cut each overflowing feature back to its k best
            spill = ~fits
            g = torch.cat([full.repeat_interleave(cap), cols[spill]])
            gv = torch.cat([self.top_v[full].flatten(), v[spill]])
            gr = torch.cat([self.top_r[full].flatten(), rows[spill]])
            g, gv, gr, rank = _best_per_group(g, gv, gr, self.k)
            self.top_v[full] = float("-inf")
            self.top_r[full] = -1
            self.top_v[g, rank], self.top_r[g, rank] = gv, gr
            self.fill[full] = self.k
            self.kth_v[full], self.kth_r[full] = self.top_v[full, self.k - 1], self.top_r[full, self.k - 1]

    def _add_samples(self, slot, rows, v) -> None:
        s = self.s
        seen = self.hist.view(-1)[slot]
        h = row_hash(rows, self.seed)
        keep = (seen < s) | (h < self.samp_h[slot, s - 1])
        slot, h, v = slot[keep], h[keep], v[keep]
        if not len(slot):
            return
        touched = torch.unique(slot)
        filled = self.hist.view(-1)[touched].clamp_max(s)
        old = torch.arange(s, device=slot.device) < filled[:, None]
        g = torch.cat([touched[:, None].expand(-1, s)[old], slot])
        gh = torch.cat([self.samp_h[touched][old], h])
        gv = torch.cat([self.samp_v[touched][old], v])
        o, rank = _smallest_per_group(g, gh, s)
        self.samp_h[touched] = INT64_MAX
        self.samp_h[g[o], rank], self.samp_v[g[o], rank] = gh[o], gv[o]

    # -- merge -------------------------------------------------------------------------------

    def _check_same(self, other) -> None:
        if type(other) is not type(self):
            got = type(other).__name__
            raise InvalidArgumentError(f"FeatureCards.merge: expected another FeatureCards, got {got}")
        mine = (self.sae.d_sae, self.k, self.s, self.decades, self.bins_per_decade, self.seed)
        theirs = (other.sae.d_sae, other.k, other.s, other.decades, other.bins_per_decade, other.seed)
        if mine != theirs:
            raise InvalidArgumentError(
                f"FeatureCards.merge: (d_sae, k, samples, decades, bins_per_decade, seed) differ: "
                f"{mine} here, {theirs} in the other"
            )

    @torch.no_grad()
    def merge(self, other: FeatureCards) -> None:
        """Add another FeatureCards' tokens (disjoint from this one's: other rows of the stream)."""
        self._check_same(other)
        dev, k = self.hist.device, self.k
        v, r = _rowwise_best(torch.cat([self.top_v, other.top_v.to(dev)], 1),
                             torch.cat([self.top_r, other.top_r.to(dev)], 1), k)  # fmt: skip
        self.top_v[:, :k], self.top_r[:, :k] = v, r
        self.top_v[:, k:], self.top_r[:, k:] = float("-inf"), -1
        self.fill = (r >= 0).sum(1)
        self.kth_v, self.kth_r = v[:, k - 1].clone(), r[:, k - 1].clone()
        if self.s:
            self._merge_samples(other)
        self.hist += other.hist.to(dev)
        self.bin_sum += other.bin_sum.to(dev)
        self.n += other.n

    def _merge_samples(self, other) -> None:
        s, dev = self.s, self.hist.device
        at = torch.arange(s, device=dev)
        empty = torch.cat([at >= self.hist.view(-1, 1).clamp_max(s),
                           at >= other.hist.view(-1, 1).to(dev).clamp_max(s)], 1)  # fmt: skip
        h = torch.cat([self.samp_h, other.samp_h.to(dev)], 1)
        v = torch.cat([self.samp_v, other.samp_v.to(dev)], 1)
        o = torch.argsort(h, dim=1, stable=True)  # by hash, then the empty slots last
        o = o.gather(1, torch.argsort(empty.gather(1, o).byte(), dim=1, stable=True))[:, :s]
        self.samp_h = torch.where(empty.gather(1, o), INT64_MAX, h.gather(1, o))
        self.samp_v = v.gather(1, o)

    def reduce_across_ranks(self) -> None:
        """Every rank's state gathered and merged in rank order, on every rank (run_pass calls it)."""
        world = dist.world()
        if world == 1:
            return
        parts = {a: dist.gather_cat(getattr(self, a)[None]) for a in self._STATE}
        ns = dist.gather_objects(self.n)
        shells = []
        for r in range(world):
            shell = copy.copy(self)
            for a in self._STATE:
                setattr(shell, a, parts[a][r])
            shell.n = ns[r]
            shells.append(shell)
        first = shells[0]
        for a in self._STATE:
            setattr(self, a, getattr(first, a).clone())
        self.n = first.n
        for shell in shells[1:]:
            self.merge(shell)

    # -- result ------------------------------------------------------------------------------

    @torch.no_grad()
    def result(self) -> CardStats:
        check_tokens(self.n, self.sae, "feature_cards")
        v, r = _rowwise_best(self.top_v, self.top_r, self.k)
        v = torch.where(r >= 0, v, float("nan"))
        total = torch.zeros(self.sae.d_sae, dtype=torch.float64, device=self.hist.device)
        for b in range(self.nb):  # in bin order: each bin's sum is exact, their total rounds once a bin
            total += self.bin_sum[:, b]
        bands = self._bands()
        cpu = lambda t: t.cpu()  # noqa: E731
        return CardStats(self.n, cpu(v), cpu(r), cpu(self.hist.sum(1)), cpu(total), cpu(self.edges),
                         cpu(self.hist), *(cpu(t) for t in bands))  # fmt: skip

    def _bands(self):
        """(band_count, band_lo, band_hi, band_rows, band_values) from the histogram and the bins'
        samples (CardStats)."""
        F, nb, B, s, dev = self.sae.d_sae, self.nb, self.bands, self.s, self.hist.device
        h = self.hist
        c = h.sum(1, keepdim=True)
        before = h.cumsum(1) - h
        band = torch.where(c > 0, (B * (2 * before + h)) // (2 * c).clamp_min(1), 0).clamp_max(B - 1)
        count = torch.zeros(F, B, dtype=torch.int64, device=dev).scatter_add_(1, band, h)
        b_idx = torch.arange(nb, device=dev).expand(F, nb)
        first = torch.full((F, B), nb, dtype=torch.int64, device=dev)
        first = first.scatter_reduce(1, band, torch.where(h > 0, b_idx, nb), "amin")
        last = torch.full((F, B), -1, dtype=torch.int64, device=dev)
        last = last.scatter_reduce(1, band, torch.where(h > 0, b_idx, -1), "amax")
        inf = torch.tensor([float("inf")], device=dev)
        lower = torch.cat([torch.zeros(1, device=dev), self.edges])  # bin b's lower edge
        upper = torch.cat([self.edges, inf])
        empty = count == 0
        lo = torch.where(empty, float("nan"), lower[first.clamp_max(nb - 1)])
        hi = torch.where(empty, float("nan"), upper[last.clamp_min(0)])
        rows = torch.full((F, B, s), -1, dtype=torch.int64, device=dev)
        vals = torch.full((F, B, s), float("nan"), device=dev)
        if s:
            at = torch.arange(s, device=dev)
            ok = at < h.view(-1, 1).clamp_max(s)  # [F * nb, s]
            group = (torch.arange(F, device=dev)[:, None] * B + band).view(-1, 1).expand(-1, s)[ok]
            hashes, values = self.samp_h[ok], self.samp_v[ok]
            o, rank = _smallest_per_group(group, hashes, s)
            rows.view(-1, s)[group[o], rank] = row_of_hash(hashes[o], self.seed)
            vals.view(-1, s)[group[o], rank] = values[o]
        return count, lo, hi, rows, vals


@torch.no_grad()
def feature_cards(sae: SAE, acts: ActsLike, k: int = 20, samples: int = 2, bands: int = 4, *,
                  seed: int = 0, progress: Progress = None) -> CardStats:  # fmt: skip
    """Stream `acts` through `sae` once and return every feature's CardStats (FeatureCards)."""
    acc = FeatureCards(sae, k, samples, bands, seed=seed)
    return measure(acc, acts, sae, progress, what="activation batch")
