"""The synthetic family at real shapes (stitchkit.data.family), and the whole study on it at a
CI size: every stage runs, and what the study reports agrees with SAEs built and measured
directly."""

import pytest
import torch

import stitchkit as sk
from stitchkit.data.family import make_family
from stitchkit.data.store import ActivationStore


def test_the_tree_has_its_fates_cosines_and_l0():
    fam = make_family(32, [64, 128, 256], l0=(6, 12), token_l0=8, seed=3)
    assert [s.d_sae for s in fam.saes] == [64, 128, 256]
    for D, s in zip(fam.directions, fam.saes):
        assert torch.allclose(D.norm(dim=1), torch.ones(len(D)), atol=1e-5)
        assert torch.equal(s.W_dec.detach(), D) and torch.equal(s.W_enc.detach(), D.T)
    ranges = {"persist": (0.97, 0.995), "drift": (0.4, 0.7), "split": (0.7, 0.95)}
    for i in (1, 2):
        prev, D, par = fam.directions[i - 1], fam.directions[i], fam.parent[i - 1]
        kids = par >= 0
        cos = (D[kids] * prev[par[kids]]).sum(1)
        for j, (p, c) in enumerate(zip(par[kids].tolist(), cos.tolist())):
            lo, hi = ranges[fam.fate[i - 1][p]]
            assert lo - 1e-4 <= c <= hi + 1e-4, (i, j, c)
        splits = [p for p, f in enumerate(fam.fate[i - 1]) if f == "split"]
        counts = torch.bincount(par[kids], minlength=len(prev))
        assert all(int(counts[p]) == 2 for p in splits[: len(splits) // 2])  # (the last may be cut)
    x = fam.sample(4000, seed=9)
    l0 = [sk.evaluate(s, x).l0 for s in fam.saes]
    for got, want in zip(l0, (6, 6 * 2**0.5, 12)):
        assert want * 0.7 < got < want * 1.3
    again = make_family(32, [64, 128, 256], l0=(6, 12), token_l0=8, seed=3)
    assert torch.equal(again.saes[2].b_enc, fam.saes[2].b_enc)
    assert torch.equal(again.sample(10), fam.sample(10))
    with pytest.raises(sk.InvalidArgumentError, match="each twice the last"):
        make_family(32, [64, 100])


def test_the_whole_study_on_a_written_family(tmp_path):
    fam = make_family(32, [64, 128, 256, 512, 1024], l0=(8, 16), token_l0=10, noise=0.02, seed=1)
    paths = fam.write(tmp_path, train_tokens=6000, held_tokens=3000)
    saes = [sk.load_sae(p) for p in paths["saes"]]
    for a, b in zip(saes, fam.saes):
        assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)
    held = torch.cat(list(ActivationStore(paths["held"]).batches(shuffle=False)))
    train = ActivationStore(paths["train"])
    res = sk.run_study(saes, held, lambda: train.batches(2000, shuffle=False),
                       sk.StudyConfig(retrain_lr=1e-2, curve_points=4))  # fmt: skip
    d = res.to_dict(dict(model="synthetic"))
    assert [r["width"] for r in d["family"]] == [64, 128, 256, 512, 1024]
    assert len(d["pairs"]) == 4 and d["headline"] == "128 vs 64"  # the adjacent default
    for key in ("delta_table", "interpolation", "frankenstein", "refit", "frontier", "lineage", "selection"):
        assert d.get(key), key
    assert "least squares (dense normal equations)" == d["refit"][0]["method"]
    # The interpolation's last step is the small SAE with every novel feature and every swap:
    # the study's exact path metric equals that SAE built and measured directly.
    small, large = saes[0], saes[1]
    path = sk.interpolate(small, large, held)
    built = path.sae(len(path.metrics.mse) - 1)
    assert path.metrics.mse[-1].item() == pytest.approx(sk.evaluate(built, held).mse, rel=1e-9)
    assert res.interpolation.mse[-1].item() == pytest.approx(path.metrics.mse[-1].item(), rel=1e-9)
