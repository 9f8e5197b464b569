import importlib

import pytest
import torch
from conftest import random_sae

from stitchkit import InvalidArgumentError, ShapeError, evaluate, make_toy, max_cosine, train_sae
from stitchkit.kernels import sparse_codes


def test_evaluate_matches_direct_computation_and_ignores_batching():
    sae = random_sae(seed=4, d_in=6, d_sae=10)
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * 2 + 1
    f = sae.encode(x)
    mse = (sae.decode(f) - x).pow(2).sum(1).mean().item()
    var = (x - x.mean(0)).pow(2).sum(1).mean().item()
    m = evaluate(sae, [x[:17], x[17:200], x[200:]])
    assert m.n_tokens == 300
    assert m.mse == pytest.approx(mse, rel=1e-5)
    assert m.normalized_mse == pytest.approx(mse / var, rel=1e-5)
    assert m.l0 == pytest.approx((f > 0).float().sum(1).mean().item())
    assert m.l1 == pytest.approx(f.sum(1).mean().item(), rel=1e-5)
    fired = (f > 0).any(0)
    assert m.dead_fraction == pytest.approx(1 - fired.float().mean().item())
    assert evaluate(sae, [x]).mse == pytest.approx(m.mse, rel=1e-6)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_evaluate_of_a_sparse_sae_on_the_cpu_reads_only_the_nonzeros(activation, monkeypatch):
    # At about 0.3% active features evaluate takes each statistic and the decode from f's nonzeros
    # (kernels.sparse_codes.nonzeros_cpu); they must be the dense passes' numbers, in float64.
    k = {"k": 4} if activation == "topk" else {}
    sae = random_sae(activation, d_in=8, d_sae=1500, seed=6, dtype=torch.float64, **k)
    with torch.no_grad():
        sae.W_enc.mul_(0.3)
        sae.b_enc.fill_(-2.5)
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = sae.encode(x)
    assert 0 < (f != 0).double().mean() < 0.01 and (f == 0).all(1).any()  # sparse; a token has none
    routes = []
    evaluate_module = importlib.import_module("stitchkit.evaluate")  # the module, not the function
    real = evaluate_module.nonzeros_cpu
    monkeypatch.setattr(evaluate_module, "nonzeros_cpu", lambda f: routes.append(real(f)) or routes[-1])
    m = evaluate(sae, [x[:150], x[150:]])
    assert len(routes) == 2 and all(r is not None for r in routes)
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    assert m.mse == pytest.approx((x_hat - x).pow(2).sum(1).mean().item(), rel=1e-12)
    assert m.l0 == pytest.approx((f != 0).double().sum(1).mean().item(), rel=1e-12)
    assert m.l1 == pytest.approx(f.sum(1).mean().item(), rel=1e-12)
    assert torch.equal(m.frequency, (f != 0).double().mean(0))
    monkeypatch.setattr(sparse_codes, "DENSE_DECODE_MAX_DENSITY", 0.0)  # the dense passes
    dense = evaluate(sae, [x[:150], x[150:]])
    assert routes[-1] is None
    assert dense.mse == pytest.approx(m.mse, rel=1e-12) and dense.l1 == pytest.approx(m.l1, rel=1e-12)
    assert dense.l0 == m.l0 and torch.equal(dense.frequency, m.frequency)


def test_evaluate_empty_stream_and_wrong_width():
    sae = random_sae()
    with pytest.raises(InvalidArgumentError, match="empty"):
        evaluate(sae, [])
    with pytest.raises(ShapeError, match=r"activation batch: batch 0 has shape \(3, 4\), expected \[n, 7\]"):
        evaluate(sae, [torch.zeros(3, 4)])


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


def test_training_lowers_loss_keeps_unit_decoder_and_finds_directions():
    toy = make_toy(d_in=16, n_parents=8, children_per_parent=0, n_rare=0, p_parent=0.1, seed=0)
    losses = []
    sae = train_sae(
        toy.batches(150_000, 512, seed=1),
        16,
        32,
        l1_coefficient=0.05,
        lr=1e-2,
        progress=lambda step, loss: losses.append(loss),
    )
    assert not sae.training
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:5]) / 5
    # Independent parents only: each ground-truth direction should have a near-copy.
    assert (max_cosine(toy.directions, sae).values > 0.95).all()


class Interrupt(Exception):
    pass


def test_train_sae_checkpoint_resume_warmup_and_dead_features(tmp_path):
    from stitchkit.train import TrainLog

    toy = make_toy(d_in=8, n_parents=4, children_per_parent=0, n_rare=0, p_parent=0.2, seed=2)
    batches = list(toy.batches(40 * 64, 64, seed=1))
    kw = dict(l1_coefficient=0.05, lr=1e-2, n_steps=40, warmup_steps=5, seed=3)
    log = TrainLog()
    full = train_sae(batches, 8, 12, log=log, dead_tokens=640, **kw)
    assert log.steps == 40 and log.tokens_since_fired.shape == (12,)
    fired_last = (full.encode(batches[-1]) > 0).any(0)
    assert (log.tokens_since_fired[fired_last] == 0).all()
    assert 0.0 <= log.dead_fraction <= 1.0

    ck = tmp_path / "train.pt"

    def stop(step, loss):
        if step == 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sae(batches, 8, 12, checkpoint=ck, checkpoint_every=10, progress=stop, **kw)
    log2 = TrainLog()
    resumed = train_sae(batches, 8, 12, checkpoint=ck, checkpoint_every=10, log=log2, **kw)
    assert log2.resumed_from == 20 and log2.steps == 40
    torch.testing.assert_close(resumed.W_dec, full.W_dec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resumed.b_enc, full.b_enc, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="belongs to another run"):
        train_sae(batches, 8, 12, checkpoint=ck, **dict(kw, lr=5e-3))
