"""The reference work's pattern on toy data with known structure (fixed seeds, stated margins).

Toy: 16 parent concepts in d_in=32, each appearing as one of 2 children (cosine 0.8 to the
parent: 0.64 to each other, ~0.9 to their mean), plus 16 rare directions. A 16-wide SAE can only
afford one latent per concept (near the mean of its children); a 64-wide SAE learns the children
and the rare directions. Expected: novel features mostly lower the small SAE's MSE when
inserted, reconstruction features mostly raise it, and the parent links join true children to
the latent of their own parent concept. (Across training seeds 1, 5, 11: novel 83-92% help,
reconstruction 82-93% hurt, every clear link correct; the margins leave room for drift.)
"""

import pytest
import torch

from stitchkit import (
    active_inactive_mse,
    classify,
    delta_table,
    make_toy,
    marginal_delta_mse,
    max_cosine,
    parent_links,
    train_sae,
)

TOKENS, BATCH = 600_000, 512


@pytest.fixture(scope="module")
def study():
    toy = make_toy(
        d_in=32,
        n_parents=16,
        children_per_parent=2,
        n_rare=16,
        child_cosine=0.8,
        p_parent=0.05,
        p_rare=0.01,
        seed=0,
    )
    steps = -(-TOKENS // BATCH)
    common = dict(l1_coefficient=0.2, lr=3e-3, n_steps=steps)
    small = train_sae(toy.batches(TOKENS, BATCH, seed=1), 32, 16, seed=1, name="small", **common)
    large = train_sae(toy.batches(TOKENS, BATCH, seed=1), 32, 64, seed=2, name="large", **common)
    acts = toy.sample(20_000, seed=9)
    return toy, small, large, acts


def test_novel_features_help_and_reconstruction_features_hurt(study):
    toy, small, large, acts = study
    c = classify(small, large, 0.7)
    table = delta_table(c, marginal_delta_mse(small, large, acts))
    n_novel = table.novel_helps + table.novel_hurts
    n_recon = table.recon_helps + table.recon_hurts
    assert n_novel >= 16 and n_recon >= 10  # both classes well populated
    assert table.novel_helps / n_novel >= 0.75, table
    assert table.recon_hurts / n_recon >= 0.7, table
    # Rare directions (absent from the small SAE) are novel and nearly always help.
    kind = torch.tensor([{"parent": 0, "child": 1, "rare": 2}[k] for k in toy.kind])
    gt = max_cosine(large, toy.directions)
    rare = (kind[gt.indices] == 2) & (gt.values > 0.9)
    assert rare.sum() >= 12
    assert c.novel[rare].float().mean() >= 0.9
    dm = marginal_delta_mse(small, large, acts, features=rare.nonzero().flatten())
    assert (dm < 0).float().mean() >= 0.9


def test_parent_links_join_true_children_to_their_parent(study):
    toy, small, large, acts = study
    links = parent_links(large, small, 0.7)
    parents = torch.tensor([i for i, k in enumerate(toy.kind) if k == "parent"])
    children = torch.tensor([i for i, k in enumerate(toy.kind) if k == "child"])
    # A concept's latent in a narrow SAE sits near the mean of the concept's children.
    means = torch.stack([toy.directions[children[toy.parent_of[children] == p]].mean(0) for p in parents])
    means = means / means.norm(dim=1, keepdim=True)
    assert (max_cosine(small, means).values > 0.9).sum() >= 12  # the small SAE learned the concepts
    child_gt = max_cosine(large.W_dec.detach()[links.child], toy.directions[children])
    parent_gt = max_cosine(small.W_dec.detach()[links.parent], means)
    clear = (child_gt.values > 0.9) & (parent_gt.values > 0.9)  # both ends clearly identified
    assert clear.sum() >= 20
    true_parent = toy.parent_of[children[child_gt.indices[clear]]]
    assert (true_parent == parents[parent_gt.indices[clear]]).float().mean() >= 0.9


def test_large_sae_wins_where_novel_features_fire(study):
    toy, small, large, acts = study
    c = classify(small, large, 0.7)
    s = active_inactive_mse(small, large, acts, features=c.novel_features).summary()
    # Where a novel feature fires the large SAE reconstructs much better than the small one;
    # elsewhere the gap is smaller.
    assert s["gap_active"] < 0 and s["gap_active"] < 2 * s["gap_inactive"]
