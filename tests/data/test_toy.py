"""Toy activations with known ground truth (stitchkit.data.toy)."""

import torch

from stitchkit import make_toy
from stitchkit.data.toy import toy_contexts


def test_toy_is_seeded_and_structured():
    toy = make_toy(d_in=32, n_parents=4, children_per_parent=3, n_rare=5, child_cosine=0.8, seed=3)
    assert toy.directions.shape == (4 + 12 + 5, 32)
    assert torch.allclose(toy.directions.norm(dim=1), torch.ones(21), atol=1e-5)
    children = [i for i, k in enumerate(toy.kind) if k == "child"]
    cos = (toy.directions[children] * toy.directions[toy.parent_of[children]]).sum(1)
    assert torch.allclose(cos, torch.full_like(cos, 0.8), atol=1e-5)
    assert torch.equal(
        toy.sample(100, seed=1),
        make_toy(d_in=32, n_parents=4, children_per_parent=3, n_rare=5, seed=3).sample(100, seed=1),
    )
    assert not torch.equal(toy.sample(100, seed=1), toy.sample(100, seed=2))
    sizes = [b.shape[0] for b in toy.batches(1000, 300)]
    assert sizes == [300, 300, 300, 100]


def test_ground_truth_rows_count_what_each_class_recovers():
    from stitchkit import SAE
    from stitchkit.data.toy import ground_truth_rows

    toy = make_toy(d_in=16, n_parents=4, children_per_parent=2, n_rare=3, seed=1)
    kind = toy.kind
    parents = [i for i, k in enumerate(kind) if k == "parent"]
    children = [i for i, k in enumerate(kind) if k == "child"]
    rare = [i for i, k in enumerate(kind) if k == "rare"]

    def sae_of(rows):
        s = SAE(16, len(rows), init=False)
        s.W_dec.data = toy.directions[rows].clone()
        return s

    # the small SAE has the parents and the first rare direction; the large one every child, the
    # first two rare directions, and one feature that matches nothing planted
    small = sae_of(parents + rare[:1])
    junk = torch.zeros(16)
    junk[0], junk[1] = 1.0, -1.0
    large = sae_of(children + rare[:2])
    large.W_dec.data = torch.cat([large.W_dec.data, (junk / junk.norm())[None]])
    n = large.W_dec.shape[0]
    novel = torch.zeros(n, dtype=torch.bool)
    novel[len(children)] = False  # rare[0]: the small SAE has it (a re-coding)
    novel[len(children) + 1] = True  # rare[1]: new, called novel
    novel[: len(children) // 2] = True  # half the children called novel
    rows = {r["cls"]: r for r in ground_truth_rows(toy, small, large, novel)}
    nov, rec = rows["novel"], rows["reconstruction"]
    assert nov["features"] + rec["features"] == n
    assert (nov["match_new"], nov["match_old"], nov["match_none"]) == (len(children) // 2 + 1, 0, 0)
    assert rec["match_old"] == 1 and rec["match_none"] == 1
    assert nov["new_child"] == len(children) and nov["new_rare"] == 1
    assert nov["recall_child"] == 0.5 and nov["recall_rare"] == 1.0 and rec["recall_rare"] == 0.0
    assert nov["precision"] == 1.0


def test_toy_contexts_are_fixed_per_row():
    ctx = toy_contexts(100, text_len=32, vocab=50)
    assert torch.equal(ctx.text_index, torch.arange(100) // 32)
    assert torch.equal(ctx.position.long(), torch.arange(100) % 32)
    assert ctx.token_ids.dtype == torch.int32
    assert 0 <= int(ctx.token_ids.min()) and int(ctx.token_ids.max()) < 50
    assert torch.equal(toy_contexts(40, text_len=32, vocab=50).token_ids, ctx.token_ids[:40])
    assert len(ctx.token_ids.unique()) > 20  # not constant
