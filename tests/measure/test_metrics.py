"""Metrics of one SAE (stitchkit.measure.metrics) on every route, against direct computation."""

import pytest
import torch

from stitchkit import InvalidArgumentError, ShapeError, evaluate
from stitchkit.measure.metrics import MetricsAccumulator
from stitchkit.ops.codes import cpu as cpu_codes
from stitchkit.ops.dispatch import configure
from tests.helpers import random_sae


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
    # (ops.codes.cpu.nonzeros_cpu); they must be the dense passes' numbers, in float64.
    k = {"k": 4} if activation == "topk" else {}
    sae = random_sae(activation, d_in=8, d_sae=1500, seed=6, dtype=torch.float64, **k)
    with torch.no_grad():
        sae.W_enc.mul_(0.3)
        sae.b_enc.fill_(-2.5)
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = sae.encode(x)
    assert 0 < (f != 0).double().mean() < 0.01 and (f == 0).all(1).any()  # sparse; a token has none
    routes = []  # a spy on the nonzeros the CPU route takes (behaviour unchanged)
    real = cpu_codes.nonzeros_cpu
    monkeypatch.setattr(cpu_codes, "nonzeros_cpu", lambda f: routes.append(real(f)) or routes[-1])
    assert MetricsAccumulator(sae).route == "cpu"
    m = evaluate(sae, [x[:150], x[150:]])
    assert len(routes) == 2 and all(r is not None for r in routes)
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    assert m.mse == pytest.approx((x_hat - x).pow(2).sum(1).mean().item(), rel=1e-12)
    assert m.l0 == pytest.approx((f != 0).double().sum(1).mean().item(), rel=1e-12)
    assert m.l1 == pytest.approx(f.sum(1).mean().item(), rel=1e-12)
    assert torch.equal(m.frequency, (f != 0).double().mean(0))
    with configure(kernels=False):  # the dense passes over f
        dense = evaluate(sae, [x[:150], x[150:]])
    assert len(routes) == 2
    assert dense.mse == pytest.approx(m.mse, rel=1e-12) and dense.l1 == pytest.approx(m.l1, rel=1e-12)
    assert dense.l0 == m.l0 and torch.equal(dense.frequency, m.frequency)


def test_evaluate_empty_stream_and_wrong_width():
    sae = random_sae()
    with pytest.raises(InvalidArgumentError, match="empty"):
        evaluate(sae, [])
    with pytest.raises(ShapeError, match=r"activation batch: batch 0 has shape \(3, 4\), expected \[n, 7\]"):
        evaluate(sae, [torch.zeros(3, 4)])
