"""Feature cards as data (stitchkit.cards) from a real study: every card's numbers are the study's
own (classes, max cosine, dMSE, swap groups, lineage), its nearest features the exact fp32 top k,
its examples the held-out pass's top rows with the store's tokens around them, and the Frankenstein
SAE's cards link to their source features."""

import json
import math

import pytest
import torch

from stitchkit import StudyConfig, nearest_features, run_study
from stitchkit.cards import feature_cards
from stitchkit.data.store import ActivationStore
from stitchkit.data.toy import TOY_TOKENIZER, toy_contexts
from tests.helpers import random_sae


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    saes = [random_sae(d_in=9, d_sae=w, seed=w, name=f"r{w}") for w in (6, 13, 29)]
    with torch.no_grad():
        for s in saes:
            s.b_enc.sub_(1.5)
            s.W_dec.div_(s.W_dec.norm(dim=1, keepdim=True))
        g = torch.Generator().manual_seed(0)
        for s in saes[1:]:
            s.W_dec[:6] = saes[0].W_dec + 0.3 * torch.randn(6, 9, generator=g)
    g = torch.Generator().manual_seed(1)
    held = torch.randn(700, 9, generator=g) * 2
    held[650:] = held[:50]  # repeated rows: exact ties in the top rows
    train = list((torch.randn(1200, 9, generator=g) * 2).split(300))
    path = tmp_path_factory.mktemp("cards") / "held"
    store = ActivationStore.from_tensor(
        held, path, model="toy", hook_name="toy", shard_tokens=256, contexts=toy_contexts(700, text_len=20),
        tokenizer=TOY_TOKENIZER,
    )  # fmt: skip
    config = StudyConfig(threshold=0.7, small=0, large=1, curve_points=5, retrain_lr=1e-2, cards=6)
    res = run_study(saes, store, train, config)
    return res, store, held


def test_cards_hold_the_studys_numbers(study):
    res, store, held = study
    cards = feature_cards(res, store, k_nearest=3, top=6)
    json.dumps(cards, allow_nan=False)  # JSON as it is written: no NaN, no inf
    names = [s["name"] for s in cards["saes"]]
    assert names == [s.name for s in res.saes] + ["frankenstein"]
    assert [s["kind"] for s in cards["saes"]] == ["family"] * 3 + ["stitched"]
    for pf in res.pair_features:
        entry, mine = cards["saes"][pf.large], cards["cards"][str(pf.large)]
        assert entry["pair_with"] == pf.small
        nn = nearest_features(res.saes[pf.large], res.saes[pf.small], 3)
        group_of = {c: g for g, grp in enumerate(pf.groups) for c in grp.children.tolist()}
        for j in range(res.saes[pf.large].d_sae):
            pair = mine[str(j)]["pair"]
            assert pair["class"] == ("novel" if pf.classification.novel[j] else "reconstruction")
            assert pair["max_cos"] == float(pf.classification.max_cos[j]) == entry["index"]["max_cos"][j]
            assert pair["dmse"] == float(pf.delta_mse[j])
            assert [n["feature"] for n in pair["nearest"]] == nn.indices[j].tolist()
            assert [n["cos"] for n in pair["nearest"]] == nn.values[j].tolist()
            assert pair["nearest"][0]["feature"] == int(pf.classification.nearest[j])
            assert pair["swap_group"] == group_of.get(j)
    lin = res.lineage
    for level in range(len(res.saes)):
        for j in range(res.saes[level].d_sae):
            events = cards["cards"][str(level)][str(j)]["lineage"]
            parents = sorted(e["feature"] for e in events if e["relation"] == "parent")
            children = sorted(e["feature"] for e in events if e["relation"] == "child")
            assert parents == lin.parents(level, j) and children == lin.children(level, j)


def test_examples_are_the_top_rows_with_their_tokens(study):
    res, store, held = study
    cards = feature_cards(res, store, top=6, before=3, after=2)
    for i, (sae, _) in enumerate(res.card_stats):
        # brute force: each feature's rows by (-value, row); rows 650.. repeat rows 0..49 (ties)
        f = sae.encode(held).detach().double()
        for j in range(sae.d_sae):
            card = cards["cards"][str(i)][str(j)]
            fired = (f[:, j] > 0).nonzero().flatten().tolist()
            want = sorted(fired, key=lambda r: (-float(f[r, j]), r))[:6]
            assert [e["row"] for e in card["top"]] == want
            assert card["count"] == len(fired)
            assert card["rate"] == len(fired) / len(held)
            for e in card["top"]:
                ctx = store.contexts(torch.tensor([e["row"]]))
                assert e["tokens"][e["mark"]] == f"tok{int(ctx.token_ids[0])}"
                assert len(e["tokens"]) == len(e["acts"]) <= 6
                win = store.window(e["row"], 3, 2)
                assert e["acts"] == pytest.approx(f[win.rows, j].tolist(), rel=1e-5, abs=1e-6)
            for b in card["bands"]:
                for e in b["examples"]:
                    assert f[e["row"], j] > 0


def test_the_frankenstein_cards_name_their_sources(study):
    res, store, _ = study
    cards = feature_cards(res, store, top=2)
    fr = res.frankenstein.sae
    last = len(cards["saes"]) - 1
    assert cards["saes"][last]["name"] == fr.name and cards["saes"][last]["pair_with"] is None
    for j, (name, idx) in enumerate(fr.provenance.entries()):
        prov = cards["cards"][str(last)][str(j)]["provenance"]
        assert prov["name"] == name and prov["index"] == idx
        assert cards["saes"][prov["sae"]]["name"] == name


def test_a_store_without_contexts_gives_cards_without_windows(study, tmp_path):
    res, _, held = study
    bare = ActivationStore.from_tensor(held, tmp_path / "bare", model="toy", hook_name="toy")
    cards = feature_cards(res, bare, top=2)
    ex = next(e for c in cards["cards"]["1"].values() for e in c["top"])
    assert ex["tokens"] == [f"row {ex['row']}"] and ex["mark"] == 0
    assert all(math.isfinite(r) for r in cards["saes"][1]["index"]["rate"])


def test_no_card_statistics_is_a_clear_error(study):
    from stitchkit.errors import InvalidArgumentError

    res, store, _ = study
    bare = type(res)(**{**vars(res), "card_stats": []})
    with pytest.raises(InvalidArgumentError, match="StudyConfig\\(cards="):
        feature_cards(bare, store)


def test_logit_effects_are_the_decoder_rows_against_the_token_directions(study):
    res, store, _ = study
    g = torch.Generator().manual_seed(3)
    directions = torch.randn(40, 9, generator=g)
    names = lambda ids: [f"w{i}" for i in ids]  # noqa: E731
    cards = feature_cards(res, store, top=1, token_directions=directions, token_names=names,
                          logits_note="random directions")  # fmt: skip
    for i, (sae, _) in enumerate(res.card_stats):
        w = sae.W_dec.detach().double() @ directions.double().t()
        for j in range(sae.d_sae):
            card = cards["cards"][str(i)][str(j)]
            assert card["logits_note"] == "random directions"
            hi, lo = w[j].topk(5), (-w[j]).topk(5)
            assert [t for t, _ in card["logits"]["top"]] == names(hi.indices.tolist())
            assert [t for t, _ in card["logits"]["bottom"]] == names(lo.indices.tolist())
            assert [v for _, v in card["logits"]["top"]] == pytest.approx(hi.values.tolist(), rel=1e-5)
