import pytest
import torch
from conftest import random_sae

from stitchkit import (
    InvalidArgumentError,
    as_activations,
    evaluate,
    frankenstein,
    load_sae,
    make_toy,
    retrain_decoder,
    train_sae,
)


class Interrupt(Exception):
    pass


def noisy_sae(seed=0, d_in=8, d_sae=20):
    sae = random_sae(d_in=d_in, d_sae=d_sae, seed=seed, name=f"s{seed}")
    with torch.no_grad():
        sae.b_enc.sub_(1.0)  # sparser codes
    return sae


def test_lstsq_is_the_least_squares_optimum_and_keeps_the_encoder_function():
    sae = noisy_sae()
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1)) + 0.3
    res = retrain_decoder(sae, [x[:700], x[700:]], method="lstsq", ridge=0.0)
    assert res.method == "lstsq" and res.sae is not sae
    # The codes are unchanged (b_dec's change folded into b_enc).
    assert torch.allclose(res.sae.encode(x), sae.encode(x), atol=1e-5)
    f = sae.encode(x).double()
    live = (f > 0).any(0)
    design = torch.cat([f[:, live], torch.ones(len(f), 1, dtype=torch.float64)], 1)
    best = torch.linalg.lstsq(design, x.double()).solution
    best_mse = (design @ best - x.double()).pow(2).sum(1).mean().item()
    assert evaluate(res.sae, x).mse == pytest.approx(best_mse, rel=1e-4)
    assert evaluate(res.sae, x).mse < evaluate(sae, x).mse
    assert torch.equal(res.sae.provenance.index, sae.provenance.index)
    # A dead feature keeps its decoder row under the ridge.
    dead = (~live).nonzero().flatten()
    res2 = retrain_decoder(sae, x, method="lstsq")
    if len(dead):
        assert torch.allclose(res2.sae.W_dec[dead], sae.W_dec[dead], atol=1e-5)


def test_lstsq_sparse_normal_equations_match_float64(monkeypatch):
    import stitchkit.retrain as retrain

    sae = noisy_sae(seed=5, d_sae=40)
    x = torch.randn(900, 8, generator=torch.Generator().manual_seed(6))
    # The float64 normal equations with retrain_decoder's ridge, as the oracle.
    with torch.no_grad():
        f = sae.encode(x).double()
    f1 = torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], 1)
    A, B = f1.T @ f1, f1.T @ x.double()
    reg = torch.full((41,), 1e-6 * float(A.diagonal()[:-1].mean()), dtype=torch.float64)
    reg[-1] = 0.0
    old = torch.cat([sae.W_dec.detach().double(), torch.zeros(1, 8, dtype=torch.float64)])
    best = torch.linalg.solve(A + torch.diag(reg), B + reg[:, None] * old)
    fits = {}
    for sparse in (True, False):
        monkeypatch.setattr(retrain, "gram_is_sparse_enough", lambda f, sparse=sparse: sparse)
        fits[sparse] = retrain_decoder(sae, list(x.split(250)), method="lstsq").sae
    # Sparse: float64 products, so float32 rounding of the result only. Dense: float32 GEMMs.
    torch.testing.assert_close(fits[True].W_dec.double(), best[:-1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fits[False].W_dec.double(), best[:-1], rtol=1e-3, atol=1e-4)


def test_adam_lowers_mse_and_resumes_from_its_checkpoint_exactly(tmp_path):
    sae = noisy_sae(seed=3)
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(4))
    batches = list(x.split(100))
    full = retrain_decoder(sae, batches, method="adam", epochs=2, lr=1e-2)
    assert full.steps == 60
    assert evaluate(full.sae, x).mse < evaluate(sae, x).mse
    assert torch.allclose(full.sae.encode(x), sae.encode(x), atol=1e-5)

    ck = tmp_path / "retrain.pt"

    def stop_at_37(step):
        if step == 37:
            raise Interrupt

    with pytest.raises(Interrupt):
        retrain_decoder(
            sae, batches, epochs=2, lr=1e-2, checkpoint=ck, checkpoint_every=10, progress=stop_at_37
        )
    assert ck.exists()
    resumed = retrain_decoder(sae, batches, epochs=2, lr=1e-2, checkpoint=ck, checkpoint_every=10)
    assert resumed.resumed and resumed.steps == 30
    assert torch.allclose(resumed.sae.W_dec, full.sae.W_dec, atol=1e-6)
    assert torch.allclose(resumed.sae.b_dec, full.sae.b_dec, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        retrain_decoder(sae, batches, epochs=2, lr=5e-3, checkpoint=ck)


def test_retrain_refuses_bad_arguments():
    sae = noisy_sae()
    x = torch.randn(10, 8)
    with pytest.raises(InvalidArgumentError, match="method must be one of"):
        retrain_decoder(sae, x, method="sgd")
    with pytest.raises(InvalidArgumentError, match="one-shot"):
        retrain_decoder(sae, iter([x]), epochs=2)
    with pytest.raises(InvalidArgumentError, match="empty"):
        retrain_decoder(sae, [])


def test_activations_wrapping():
    x = torch.arange(20.0).reshape(10, 2)
    assert [b.shape[0] for b in as_activations(x, batch_size=4)] == [4, 4, 2]
    acts = as_activations(lambda: iter([x, x]))
    assert len(list(acts)) == 2 and len(list(acts)) == 2  # a callable is called per pass
    once = as_activations(iter([x]))
    list(once)
    with pytest.raises(InvalidArgumentError, match="second pass"):
        list(once)
    with pytest.raises(InvalidArgumentError, match="batch 0 is str"):
        list(as_activations(["no"]))
    with pytest.raises(InvalidArgumentError, match="expected a tensor"):
        as_activations(3)


@pytest.fixture(scope="module")
def family():
    toy = make_toy(d_in=16, n_parents=8, children_per_parent=2, n_rare=8, child_cosine=0.6, seed=1)
    saes = []
    for width in (8, 16, 32):
        saes.append(
            train_sae(
                toy.batches(60_000, 500, seed=1),
                16,
                width,
                l1_coefficient=0.1,
                lr=1e-2,
                seed=width,
                name=f"toy-{width}",
                n_steps=120,
            )
        )
    return toy, saes


def test_frankenstein_stages_provenance_and_resume(family, tmp_path):
    toy, saes = family
    train = toy.sample(4000, seed=3)
    held = toy.sample(2000, seed=4)
    res = frankenstein(saes[::-1], train, 0.7, retrain="lstsq", eval_acts=held)
    assert [s.source for s in res.stages] == ["toy-8", "toy-16", "toy-32"]
    st = res.stages
    assert st[0].n_features == 8 and st[0].mse == pytest.approx(evaluate(saes[0], held).mse)
    for a, b in zip(st, st[1:]):
        assert b.n_features == a.n_features + b.n_added
        assert b.mse <= b.mse_before + 1e-9  # least squares never raises the training-set fit much
    assert res.sae.d_sae == st[-1].n_features
    assert set(res.sae.provenance.sources) <= {"toy-8", "toy-16", "toy-32"}
    assert st[-1].mse == pytest.approx(evaluate(res.sae, held).mse)
    assert st[-1].reference in {"toy-16", "toy-32"}

    ck = tmp_path / "run"
    messages = []

    def stop_in_stage_2(msg):
        messages.append(msg)
        if msg.startswith("stage 2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        frankenstein(
            saes, train, retrain="lstsq", eval_acts=held, checkpoint_dir=ck, progress=stop_in_stage_2
        )
    assert (ck / "stage_01.json").exists() and not (ck / "stage_02.json").exists()
    assert load_sae(ck / "stage_01").d_sae == st[1].n_features
    messages.clear()
    again = frankenstein(
        saes, train, retrain="lstsq", eval_acts=held, checkpoint_dir=ck, progress=messages.append
    )
    assert messages[:2] == [f"stage 0: loaded from {ck}", f"stage 1: loaded from {ck}"]
    assert [s.mse for s in again.stages] == pytest.approx([s.mse for s in st], rel=1e-6)
    assert again.sae.provenance.entries() == res.sae.provenance.entries()
    with pytest.raises(InvalidArgumentError, match="holds another run"):
        frankenstein(saes, train, 0.6, retrain="lstsq", checkpoint_dir=ck)
    retrained = [saes[0], saes[1].select(torch.arange(16), name="toy-16"), saes[2]]
    with torch.no_grad():
        retrained[1].W_dec[0] += 0.01  # same names and widths, other weights
    with pytest.raises(InvalidArgumentError, match="holds another run"):
        frankenstein(retrained, train, retrain="lstsq", checkpoint_dir=ck)


def test_frankenstein_refuses_bad_input(family):
    toy, saes = family
    x = toy.sample(100)
    with pytest.raises(InvalidArgumentError, match="at least one SAE"):
        frankenstein([], x)
    with pytest.raises(InvalidArgumentError, match="retrain must be one of"):
        frankenstein(saes, x, retrain="sgd")
    with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(0, 1\)"):
        frankenstein(saes, x, 1.2)
    with pytest.raises(InvalidArgumentError, match="several passes"):
        frankenstein(saes, iter([x]))
    other = random_sae(d_in=5, d_sae=4, name="other")
    with pytest.raises(Exception, match="d_in"):
        frankenstein(saes + [other], x)
