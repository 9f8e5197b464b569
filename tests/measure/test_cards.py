"""Feature cards (stitchkit.measure.cards): every statistic equals a brute force over the dense
features, exactly (ties included); merging, batching, routes and ranks change nothing, bit for bit;
Batch.offset names every token by its place in the whole stream."""

import dataclasses
import json
import math

import pytest
import torch

from stitchkit import SAE, InvalidArgumentError
from stitchkit.data.toy import make_toy
from stitchkit.measure import CardStats, FeatureCards, MetricsAccumulator, feature_cards, run_pass
from stitchkit.measure.accumulator import Batch
from stitchkit.measure.cards import GOLDEN, MIX1, MIX2, hist_edges, row_hash, row_of_hash
from stitchkit.ops.dispatch import configure
from tests.helpers import random_sae, run_ranks

M64 = 2**64


def splitmix(row: int, seed: int = 0) -> int:
    """splitmix64's row-th output for `seed`, in Python integers, read as a signed int64."""
    z = (seed + (row + 1) * GOLDEN) % M64
    z = ((z ^ (z >> 30)) * MIX1) % M64
    z = ((z ^ (z >> 27)) * MIX2) % M64
    z ^= z >> 31
    return z - M64 if z >= 2**63 else z


def dyadic(seed=0, n=1600, d_in=8, d_sae=24):
    """An fp32 relu SAE and tokens whose every product and sum is exact in fp32 (quarters): every
    route gives the same values, and many values tie. Feature 0 never fires, feature 1 fires on a
    few rows (all at 0.25), feature 2 reaches the overflow bin, feature 3 stays in the underflow
    bin; the stream repeats some tokens (equal values at other rows)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randint(-4, 5, (d_in, d_sae), generator=g) / 4
    b = torch.randint(-8, 1, (d_sae,), generator=g) / 4
    W[:, 0], b[0] = 0, -1
    W[:, 1], b[1] = 0, -2.75
    W[:3, 1] = 1
    W[:, 2], b[2] = W[:, 2] * 2**14, b[2] * 2**14
    W[:, 3], b[3] = W[:, 3] * 2**-16, b[3] * 2**-16
    sae = SAE(d_in, d_sae, "relu", name="dyadic", generator=g)
    with torch.no_grad():
        sae.W_enc.copy_(W)
        sae.b_enc.copy_(b)
        sae.b_dec.zero_()
    x = torch.randint(-4, 5, (n, d_in), generator=g) / 4
    return sae, torch.cat([x, x[:120], x[500:530]])


def reference(f: torch.Tensor, k: int, s: int, B: int, seed: int = 0) -> dict:
    """Brute force over dense features f [n, F] (float64): each feature's nonzeros as fp32, sorted
    by (value desc, row asc); histogram by comparing with every edge; per-bin exact sums (fsum)
    added in bin order; bands by the midpoint rule; each band's s rows of smallest splitmix hash."""
    edges = hist_edges().tolist()
    nb = len(edges) + 1
    lower, upper = [0.0] + edges, edges + [math.inf]
    out = {key: [] for key in ("top_values", "top_rows", "count", "sum", "hist", "band_count", "band_lo",
                               "band_hi", "band_rows", "band_values")}  # fmt: skip
    for j in range(f.shape[1]):
        rows = f[:, j].nonzero().flatten().tolist()
        vals = f[rows, j].float().tolist()
        best = sorted(zip((-v for v in vals), rows))[:k]
        out["top_values"].append([-v for v, _ in best] + [math.nan] * (k - len(best)))
        out["top_rows"].append([r for _, r in best] + [-1] * (k - len(best)))
        bins = [sum(v >= e for e in edges) for v in vals]
        h = [bins.count(b) for b in range(nb)]
        total = 0.0
        for b in range(nb):
            total += math.fsum(v for v, bb in zip(vals, bins) if bb == b)
        out["count"].append(len(rows))
        out["sum"].append(total)
        out["hist"].append(h)
        c, before, band = len(rows), 0, []
        for b in range(nb):
            band.append(min(B - 1, (B * (2 * before + h[b])) // (2 * c)) if c else 0)
            before += h[b]
        cnt, lo, hi, brows, bvals = [], [], [], [], []
        for q in range(B):
            mine = [b for b in range(nb) if band[b] == q and h[b]]
            cnt.append(sum(h[b] for b in mine))
            lo.append(lower[mine[0]] if mine else math.nan)
            hi.append(upper[mine[-1]] if mine else math.nan)
            here = [(splitmix(r, seed), r, v) for r, v, bb in zip(rows, vals, bins) if band[bb] == q]
            members = sorted(here)[:s]
            brows.append([r for _, r, _ in members] + [-1] * (s - len(members)))
            bvals.append([v for _, _, v in members] + [math.nan] * (s - len(members)))
        keys = ("band_count", "band_lo", "band_hi", "band_rows", "band_values")
        for key, val in zip(keys, (cnt, lo, hi, brows, bvals)):
            out[key].append(val)
    ints = {"top_rows", "count", "hist", "band_count", "band_rows"}
    f32 = {"top_values", "band_lo", "band_hi", "band_values"}
    dtype = {k: torch.int64 if k in ints else torch.float32 if k in f32 else torch.float64 for k in out}
    return {k: torch.tensor(v, dtype=dtype[k]) for k, v in out.items()}


def same(a: CardStats, b: CardStats) -> None:
    """Every field equal, bit for bit (NaN where NaN)."""
    assert a.n == b.n
    for field in dataclasses.fields(CardStats):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, field.name
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=field.name)


def test_row_hash_is_splitmix64_and_inverts():
    rows = torch.tensor([0, 1, 2, 3, 1000, 2**31, 2**40 + 7, 2**62, -1, -(2**63)])
    for seed in (0, 1, 12345, 2**63 + 5):
        got = row_hash(rows, seed)
        assert got.tolist() == [splitmix(r % M64, seed % M64) for r in rows.tolist()]
        assert torch.equal(row_of_hash(got, seed), rows)
    h = torch.randint(-(2**63), 2**63 - 1, (1000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(row_hash(row_of_hash(h, 7), 7), h)


@pytest.mark.parametrize("k,s,B", [(20, 2, 4), (4, 3, 5)])
def test_cards_equal_a_brute_force_with_ties(k, s, B):
    sae, x = dyadic()
    f = (x.double() @ sae.W_enc.detach().double() + sae.b_enc.detach().double()).clamp_min(0)
    ref = reference(f, k, s, B)
    got = feature_cards(sae, list(x.split(173)), k=k, samples=s, bands=B)
    assert got.n == len(x)
    for key, want in ref.items():
        torch.testing.assert_close(getattr(got, key), want, rtol=0, atol=0, equal_nan=True, msg=key)
    # What the toy was built to exercise.
    assert got.count[0] == 0 and 0 < got.count[1] < k and (got.top_rows[1] == -1).any()
    assert got.hist[2, -1] > 0 and got.hist[3, 0] > 0  # the overflow and the underflow bins
    v = got.top_values[:, :-1]
    tie = (v == got.top_values[:, 1:]) & (got.top_rows[:, 1:] >= 0)
    assert tie.any() and (got.top_rows[:, 1:][tie] > got.top_rows[:, :-1][tie]).all()  # smaller row first
    torch.testing.assert_close(got.firing_rate, ref["count"].double() / len(x))
    mean = got.mean_activation
    assert mean[0].isnan() and torch.equal(mean[1:], ref["sum"][1:] / ref["count"][1:].double())
    # Every sampled row is a nonzero of its feature, with its value, inside its band's range.
    j, q, i = (got.band_rows >= 0).nonzero().unbind(1)
    r = got.band_rows[j, q, i]
    assert torch.equal(got.band_values[j, q, i].double(), f[r, j].float().double())
    v = got.band_values[j, q, i]
    assert ((v >= got.band_lo[j, q]) & (v < got.band_hi[j, q])).all()


def test_a_float64_sae_on_toy_data_matches_its_dense_features():
    toy = make_toy(d_in=16, n_parents=8, n_rare=8, seed=1)
    x = toy.sample(3000, seed=2).double()
    sae = random_sae("relu", d_in=16, d_sae=64, seed=3, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.div_(sae.W_enc.norm(dim=0))
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    f = sae.encode(x)
    assert 0 < (f != 0).double().mean() < 0.03  # sparse enough for the codes
    assert ((f != 0).sum(0) < 20).any()
    ref = reference(f, 20, 2, 4)
    got = feature_cards(sae, list(x.split(700)))
    for key in ("top_rows", "count", "hist", "band_count", "band_rows"):
        assert torch.equal(getattr(got, key), ref[key]), key
    torch.testing.assert_close(got.top_values, ref["top_values"], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got.sum, ref["sum"], rtol=1e-12, atol=0)


def _cards(k=3, s=2, B=4):
    sae, x = dyadic(seed=1)
    return sae, x, lambda: FeatureCards(sae, k, s, B)


@pytest.mark.parametrize("k,s,B", [(3, 2, 4), (20, 1, 3)])
def test_merging_and_batching_are_exact(k, s, B):
    sae, x, make = _cards(k, s, B)
    one = make()
    run_pass([one], [x], d_in=8, device=sae.device)
    want = one.result()
    for sizes in ([1, 2, 500, 7], [64] * 30, [len(x) - 1]):
        cuts = torch.tensor(sizes).cumsum(0).tolist()
        batches = list(x.tensor_split(cuts))
        acc = make()
        run_pass([acc], batches, d_in=8, device=sae.device)
        same(acc.result(), want)
    # Two accumulators over the two halves (fed out of order), merged either way round.
    a, b = make(), make()
    with torch.no_grad():
        for lo in range(900, len(x), 111):
            b.update(Batch(x[lo : lo + 111], lo))
        for lo in reversed(range(0, 900, 50)):
            a.update(Batch(x[lo : min(lo + 50, 900)], lo))
    a2, b2 = make(), make()
    a2.merge(a)
    a2.merge(b)
    b2.merge(b)
    b2.merge(a)
    same(a2.result(), want)
    same(b2.result(), want)
    a.merge(b)
    same(a.result(), want)


def test_the_codes_route_and_the_dense_route_agree():
    sae, x = dyadic(seed=2)
    got = feature_cards(sae, list(x.split(400)))
    with configure(kernels=False):
        dense = feature_cards(sae, list(x.split(400)))
    with configure(route="torch"):
        torch_route = feature_cards(sae, list(x.split(400)))
    same(got, dense)
    same(got, torch_route)


class Offsets:
    """Records (offset, tokens) of every Batch it sees; gathers them over ranks."""

    width = 0

    def __init__(self):
        self.seen = []

    def update(self, batch):
        self.seen.append((batch.offset, batch.x.shape[0]))

    def merge(self, other):
        self.seen += other.seen

    def result(self):
        return sorted(self.seen)

    def reduce_across_ranks(self):
        from stitchkit import dist

        self.seen = [s for part in dist.gather_objects(self.seen) for s in part]


def test_batch_offsets_count_every_token_before_them():
    sae, x = dyadic()
    rec = Offsets()
    batches = list(x.tensor_split([5, 6, 400, 1000]))
    run_pass([rec, MetricsAccumulator(sae)], batches, d_in=8, device=sae.device)
    at = 0
    for offset, n in rec.result():
        assert offset == at
        at += n
    assert at == len(x) and Batch(x).offset == 0


def _on_ranks(rank, n_batches):
    sae, x = dyadic(seed=3)
    cards, rec = FeatureCards(sae, 5, 2, 4), Offsets()
    run_pass([cards, rec], list(x.tensor_split(n_batches)), d_in=8, device=sae.device)
    return cards.result(), rec.result(), len(x)


@pytest.mark.parametrize("world,n_batches", [(2, 7), (3, 2)])  # (3, 2): a rank with no token
def test_ranks_give_the_one_process_cards(tmp_path, world, n_batches):
    alone, _, n = _on_ranks(0, n_batches)
    for got, offsets, _ in run_ranks(_on_ranks, world, n_batches, tmp_path=tmp_path):
        same(got, alone)
        assert [o for o, _ in offsets] == torch.tensor([0] + [m for _, m in offsets]).cumsum(0)[:-1].tolist()
        assert sum(m for _, m in offsets) == n


def test_feature_dicts_are_plain_json_and_state_is_as_stated():
    sae, x = dyadic()
    got = feature_cards(sae, [x], k=4)
    for j in range(sae.d_sae):
        card = json.loads(json.dumps(got.feature(j), allow_nan=False))
        assert card["count"] == int(got.count[j]) and len(card["top_rows"]) == min(4, card["count"])
        assert card["top_rows"] == got.top_rows[j][: len(card["top_rows"])].tolist()
        assert sum(b["count"] for b in card["bands"]) == card["count"] == sum(card["hist"])
    assert got.feature(0)["mean_activation"] is None
    assert FeatureCards(sae).state_bytes() == sae.d_sae * (20 * 24 + 20 + 34 * 16 + 34 * 2 * 12)


def test_empty_streams_and_mismatched_merges_are_refused():
    sae, x = dyadic()
    with pytest.raises(InvalidArgumentError, match="was empty"):
        feature_cards(sae, [])
    with pytest.raises(InvalidArgumentError, match="differ"):
        FeatureCards(sae, k=3).merge(FeatureCards(sae, k=4))
    with pytest.raises(InvalidArgumentError, match="expected another FeatureCards"):
        FeatureCards(sae).merge(MetricsAccumulator(sae))
    with pytest.raises(InvalidArgumentError, match="k >= 1"):
        FeatureCards(sae, k=0)
