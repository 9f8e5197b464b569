"""torch.distributed (stitchkit.dist and every caller): on gloo with 2 and 3 processes each
distributed computation gives the single-process answer: identical indices and integer outputs,
float64 sums to EXACT_FP64."""

import pytest
import torch

import stitchkit as sk
from stitchkit import dist
from tests.helpers import random_sae, run_ranks
from tests.tolerances import EXACT_FP64


def test_alone_every_function_is_the_identity():
    assert (dist.world(), dist.rank(), dist.is_main()) == (1, 0, True)
    assert dist.shard(10, 4) == (0, 10)
    t = torch.arange(3.0)
    assert dist.all_sum_(t) is t and dist.gather_cat(t) is t and dist.broadcast("x") == "x"
    assert dist.all_sum(5) == 5 and dist.work_record()["world_size"] == 1


@pytest.mark.parametrize("world", [2, 3, 5])
def test_shards_cover_in_order_on_aligned_boundaries(world, monkeypatch):
    for n, align in ((10, 1), (10, 4), (3, 1), (0, 4), (4097, 4096)):
        got = []
        for r in range(world):
            monkeypatch.setattr(dist, "world", lambda: world)
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            got.append(dist.shard(n, align))
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
        assert all(lo % align == 0 for lo, _ in got if lo < n)


def _tensors(rank):
    g = torch.Generator().manual_seed(10 + rank)
    return [torch.randn(3, 5, generator=g), torch.randn(7, generator=g).double(), torch.randn(1, generator=g)]


def _sums(rank):
    many = _tensors(rank)
    dist.all_sum_many_(many)
    return many


@pytest.mark.parametrize("world", [2, 3])
def test_all_sum_many_sums_each_tensor_over_ranks(tmp_path, world):
    """Packed into one message per dtype, each tensor keeps its shape and dtype and gets the sum
    of every rank's values."""
    want = [sum(ts) for ts in zip(*(_tensors(r) for r in range(world)))]
    for got in run_ranks(_sums, world, tmp_path=tmp_path):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def _family():
    small = random_sae("relu", d_in=8, d_sae=12, seed=1)
    large = random_sae("relu", d_in=8, d_sae=40, seed=2)
    with torch.no_grad():  # children of the small SAE's first rows, so there are links and swaps
        large.W_dec[:6] = small.W_dec[:6] + 0.3 * torch.randn(
            6, 8, generator=torch.Generator().manual_seed(3)
        )
    return small, large


def _acts(n_batches=7, rows=None):
    g = torch.Generator().manual_seed(4)
    return [torch.randn(rows or 13 + 5 * i, 8, generator=g) for i in range(n_batches)]  # uneven batches


def _measurements(rank, n_batches, rows=None):
    small, large = _family()
    acts = _acts(n_batches, rows)
    m = sk.evaluate(large, acts)
    c = sk.classify(small, large, 0.7)
    groups = sk.swap_groups(small, large, 0.7)
    d_mse, d_l0 = sk.swap_delta(small, large, [(g.children, g.parents) for g in groups], acts)
    path = sk.interpolate(small, large, acts)
    ai = sk.active_inactive_mse(small, large, acts, c.novel_features).summary()
    sim = sk.activation_similarity(large, small, acts)
    mc = sk.max_cosine(large, small, backend="torch")
    mcf = sk.max_cosine(large, small, backend="faiss")
    links = sk.parent_links(large, small, 0.5, backend="torch")
    return dict(
        world=dist.world(),
        share=dist.work_record()["work_per_rank"],
        n=m.n_tokens,
        mse=m.mse,
        l0=m.l0,
        freq=m.frequency,
        dmse=sk.marginal_delta_mse(small, large, acts),
        swap=(d_mse, d_l0),
        path=(path.metrics.mse, path.metrics.l0),
        ai=ai,
        sim=sim,
        mc=(mc.values, mc.indices, mcf.values, mcf.indices),
        links=(links.child, links.parent, links.cos),
    )


def _close(a, b, where=""):
    if isinstance(a, torch.Tensor):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(
                a.double(),
                b.double(),
                rtol=EXACT_FP64["rel"],
                atol=EXACT_FP64["abs"],
                equal_nan=True,
                msg=lambda m: f"{where}: {m}",
            )
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (tuple, list)):
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        _close(vars(a), vars(b), where)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=EXACT_FP64["rel"], abs=EXACT_FP64["abs"]), where
    else:
        assert a == b, where


# (3, 2, None): two batches over three ranks, so rank 2 never gets a token
@pytest.mark.parametrize("world,n_batches,rows", [(1, 7, None), (2, 7, None), (3, 7, None), (3, 2, None)])
def test_measurements_and_similarity_equal_one_process(tmp_path, world, n_batches, rows):
    alone = _measurements(0, n_batches, rows)
    ranks = run_ranks(_measurements, world, n_batches, rows, tmp_path=tmp_path)
    for r, got in enumerate(ranks):
        assert got.pop("world") == world
        share = [w.get("tokens", 0) for w in got.pop("share")]
        assert len(share) == world and (n_batches >= world or share[-1] == 0) and share[0] > 0
        _close({k: v for k, v in alone.items() if k not in ("world", "share")}, got, f"rank {r}")
        for a, b in zip(alone["mc"], got["mc"]):  # max cosine and links: bit for bit
            assert torch.equal(a, b)
        for a, b in zip(alone["links"], got["links"]):
            assert torch.equal(a, b)


def _fits(rank, tmp):
    from stitchkit.fit.train import train_family, train_sae

    small, large = _family()
    acts = _acts(6)
    lstsq = sk.retrain_decoder(large, acts, method="lstsq").sae
    adam = sk.retrain_decoder(large, acts, method="adam", epochs=2, lr=1e-2).sae
    fr = sk.frankenstein(
        [small, large], acts, retrain="adam", lr=1e-2, checkpoint_dir=f"{tmp}/fr", backend="torch"
    )
    fr_ls = sk.frankenstein([small, large], acts, retrain="lstsq", backend="torch")
    g = torch.Generator().manual_seed(9)
    batches = [torch.randn(30 + i, 8, generator=g) for i in range(12)]
    trained = train_sae(batches, 8, 24, l1_coefficient=0.1, lr=5e-3, seed=3, n_steps=12)
    fam = {}

    def make(seed, steps):
        return (torch.randn(40, 8, generator=torch.Generator().manual_seed(seed + i)) for i in range(steps))

    for parallel in ("batch", "widths"):
        out = train_family(make, 8, [16, 32, 48], f"{tmp}/fam-{parallel}", n_steps=5, l1_coefficient=0.1,
                           lr=5e-3, parallel=parallel)  # fmt: skip
        fam[parallel] = [s.W_dec.detach().clone() for s in out]
    return dict(
        lstsq=(lstsq.W_dec.detach(), lstsq.b_dec.detach()),
        adam=(adam.W_dec.detach(), adam.b_dec.detach()),
        fr=(fr.sae.W_dec.detach(), [s.mse for s in fr.stages]),
        fr_ls=fr_ls.sae.W_dec.detach(),
        train=(trained.W_enc.detach(), trained.W_dec.detach()),
        fam=fam,
        work=dist.work_record(),
    )


@pytest.mark.parametrize("world", [2, 3])
def test_retrain_frankenstein_and_training_equal_one_process(tmp_path, world):
    alone = _fits(0, tmp_path / "alone")
    ranks = run_ranks(_fits, world, str(tmp_path / "ranked"), tmp_path=tmp_path)
    fp32 = dict(rtol=1e-4, atol=1e-5)  # float32 gradients summed in another order
    for got in ranks:
        torch.testing.assert_close(got["lstsq"], alone["lstsq"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got["fr_ls"], alone["fr_ls"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got["adam"], alone["adam"], **fp32)
        torch.testing.assert_close(got["fr"][0], alone["fr"][0], **fp32)
        assert got["fr"][1] == pytest.approx(alone["fr"][1], rel=1e-4)
        torch.testing.assert_close(got["train"], alone["train"], **fp32)
        torch.testing.assert_close(got["fam"]["batch"], alone["fam"]["batch"], **fp32)
        for a, b in zip(got["fam"]["widths"], alone["fam"]["widths"]):  # each width trained alone
            assert torch.equal(a, b)
        work = got["work"]
        assert work["world_size"] == world and len(work["work_per_rank"]) == world
        assert all(w["tokens"] > 0 for w in work["work_per_rank"])  # every rank took its share
    for a, b in zip(ranks, ranks[1:]):  # and every rank holds the same model
        assert torch.equal(a["adam"][0], b["adam"][0]) and torch.equal(a["train"][1], b["train"][1])
    assert (tmp_path / "ranked" / "fr").exists() and (tmp_path / "ranked" / "fam-widths" / "sae-48").exists()


def _collect(rank, model_dir, out, max_tokens):
    from stitchkit.data import ActivationStore, LensSource
    from tests.helpers import TEXTS

    src = LensSource.load(model_dir, "blocks.1.hook_resid_pre", context_length=16, batch_size=4)
    seen = []
    store = ActivationStore.collect(
        src, TEXTS * 3, out, max_tokens=max_tokens, shard_tokens=50, progress=seen.append
    )
    contexts = tuple(store.contexts(torch.arange(store.n_tokens)))
    return torch.cat(list(store.batches(64, shuffle=False))), store.n_tokens, seen, contexts


@pytest.mark.parametrize("world,max_tokens", [(2, 10_000), (3, 150)])  # (3, 150): the cut falls in rank 0
def test_collect_gives_one_process_tokens_in_order(tiny_dir, tmp_path, world, max_tokens):
    alone, n, _, contexts = _collect(0, tiny_dir, tmp_path / "alone", max_tokens)
    ranks = run_ranks(_collect, world, tiny_dir, tmp_path / "ranked", max_tokens, tmp_path=tmp_path)
    for x, m, _, ctx in ranks:
        assert m == n and torch.equal(x, alone)
        assert all(torch.equal(a, b) for a, b in zip(ctx, contexts))  # text_index counts in all texts
    if n < max_tokens:  # every text was run, the last rank's numbered in the whole list
        assert int(contexts[1][-1]) == 3 * 20 - 1
    # Rank 0 reports every rank's tokens: it ends at the store's total, never goes back and
    # never passes max_tokens. Uncut, every other rank's own count stays below that total.
    seen = ranks[0][2]
    assert seen[-1] == n and max(seen) <= max_tokens and seen == sorted(seen)
    if n < max_tokens:
        assert all(max(r[2]) < n for r in ranks[1:])
    again = run_ranks(_collect, world, tiny_dir, tmp_path / "ranked", max_tokens, tmp_path=tmp_path / "again")
    assert torch.equal(again[0][0], alone)  # a complete store is reused as it is


def _keys_with_ties():
    """Queries against keys holding exact duplicates on both sides of every shard boundary and a
    zero row: the tie rule (the smallest key index) must survive the merge of key shards."""
    g = torch.Generator().manual_seed(11)
    key = torch.randn(23, 8, generator=g)
    key[[5, 11, 17, 22]] = key[0].clone()  # one key four more times, one copy in each shard
    key[9] = 0.0
    query = torch.randn(37, 8, generator=g)
    query[:4] = 3.0 * key[0]  # their best is the duplicated key: an exact four-way tie
    return query, key


def _similarity_by_key_shards(rank, shards):
    from stitchkit.ops import dispatch

    query, key = _keys_with_ties()
    out = {}
    with dispatch.configure(key_shards=shards):
        for backend in ("cpu", "torch", "faiss"):
            mc = sk.max_cosine(query, key, backend=backend, on_zero="nan")
            links = sk.parent_links(query, key[key.norm(dim=1) > 0], 0.3, backend=backend)
            out[backend] = (mc.values, mc.indices, links.child, links.parent, links.cos)
        out["work"] = dist.work_record()["work_per_rank"]
    return out


@pytest.mark.parametrize("world,shards", [(2, 2), (3, 3), (3, 1)])
def test_key_shards_give_the_one_process_answer_bit_for_bit(tmp_path, world, shards):
    alone = _similarity_by_key_shards(0, None)
    assert torch.equal(alone["cpu"][1][:4], torch.zeros(4, dtype=torch.int64))  # the tie went to 0
    for r, got in enumerate(run_ranks(_similarity_by_key_shards, world, shards, tmp_path=tmp_path)):
        for backend in ("cpu", "torch", "faiss"):  # no near-ties but the exact ones: all agree
            for a, b in zip(alone[backend], got[backend]):
                assert torch.equal(a, b), (r, backend)
        # Six searches of the 22 nonzero keys: every query group covers them once, and each rank
        # searched its own shard of them only.
        key_rows = [w["key_rows"] for w in got["work"]]
        assert sum(key_rows) == (world // shards) * 6 * 22
        assert max(key_rows) == 6 * -(-22 // shards)


def test_key_shards_must_divide_the_world(tmp_path):
    from stitchkit.ops import dispatch

    with dispatch.configure(key_shards=2):
        with pytest.raises(sk.StitchkitError, match="divisor of the world size 3"):
            dispatch.key_shards(100, torch.device("cpu"), 3)
    assert dispatch.key_shards(10**18, torch.device("cpu"), 4) == 4  # too large for anyone: all
    assert dispatch.key_shards(100, torch.device("cpu"), 4) == 1
