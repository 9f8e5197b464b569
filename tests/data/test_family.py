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


def test_the_whole_study_on_a_written_family(tmp_path, monkeypatch):
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

    # The same study with every stage's memory too small for its dense form: the refit by
    # conjugate gradients, the frontier and greedy selection on the sparse co-firing forms, each
    # equal to the dense algorithm's result within its stated tolerance.
    import stitchkit.fit.retrain as retrain
    import stitchkit.study as study

    monkeypatch.setattr(study, "stage_memory", lambda device: 1 << 10)
    monkeypatch.setattr(retrain, "stage_memory", lambda device: 1 << 10)
    said = []
    lean = sk.run_study(saes, held, lambda: train.batches(2000, shuffle=False),
                        sk.StudyConfig(retrain_lr=1e-2, curve_points=4, refit_mse_tol=1e-9,
                                       refit_max_iter=2000), progress=said.append)  # fmt: skip
    e = lean.to_dict(dict(model="synthetic"))
    assert e["refit"][0]["method"].startswith("least squares (conjugate gradients")
    assert "converged" in e["refit"][0]["method"]
    assert e["refit"][0]["mse"] == pytest.approx(d["refit"][0]["mse"], rel=1e-6)
    assert e["frontier"]["algorithm"] == "sparse co-firing form"
    assert [(r["n_inserted"], r["n_removed"]) for r in e["frontier"]["stitched"]] == [
        (r["n_inserted"], r["n_removed"]) for r in d["frontier"]["stitched"]
    ]
    for a, b in zip(e["frontier"]["stitched"], d["frontier"]["stitched"]):
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
        assert a["fit_mse"] == pytest.approx(b["fit_mse"], rel=1e-6)
    assert torch.equal(lean.selection.greedy, res.selection.greedy)
    torch.testing.assert_close(lean.selection.greedy_mse, res.selection.greedy_mse, rtol=1e-6, atol=1e-9)
    assert e["family"] == d["family"] and e["pairs"] == d["pairs"]
