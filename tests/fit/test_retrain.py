"""Decoder refits with the encoder frozen (stitchkit.fit.retrain): least squares against float64,
Adam and its checkpoint."""

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    evaluate,
    retrain_decoder,
)
from tests.helpers import Interrupt, random_sae


def noisy_sae(seed=0, d_in=8, d_sae=20):
    sae = random_sae(d_in=d_in, d_sae=d_sae, seed=seed, name=f"s{seed}")
    with torch.no_grad():
        sae.b_enc.sub_(1.0)  # sparser codes
    return sae


def float64_refit(sae, x, ridge=1e-6):
    """The float64 normal equations with retrain_decoder's ridge, solved: [W_dec; b_dec]."""
    with torch.no_grad():
        f = sae.encode(x).double()
    f1 = torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], 1)
    A, B = f1.T @ f1, f1.T @ x.double()
    reg = torch.full((f1.shape[1],), ridge * float(A.diagonal()[:-1].mean()), dtype=torch.float64)
    reg[-1] = 0.0
    old = torch.cat([sae.W_dec.detach().double(), torch.zeros(1, x.shape[1], dtype=torch.float64)])
    return torch.linalg.solve(A + torch.diag(reg), B + reg[:, None] * old)


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


def test_lstsq_sparse_normal_equations_match_float64():
    sae = noisy_sae(seed=5, d_sae=40)
    x = torch.randn(900, 8, generator=torch.Generator().manual_seed(6))
    best = float64_refit(sae, x)  # the oracle
    fits = {}
    for sparse in (True, False):
        fits[sparse] = retrain_decoder(sae, list(x.split(250)), method="lstsq", sparse_gram=sparse).sae
    # Sparse: float64 products, so float32 rounding of the result only. Dense: float32 GEMMs.
    torch.testing.assert_close(fits[True].W_dec.double(), best[:-1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fits[False].W_dec.double(), best[:-1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("numba", [True, False])
def test_cg_gram_products_equal_float64(numba):
    """fit.cg.SparseCodes: c1^T (c1 P) from the kept nonzeros, numba's products or torch's CSR."""
    from stitchkit.fit.cg import SparseCodes

    g = torch.Generator().manual_seed(2)
    chunks = [torch.relu(torch.randn(n, 30, generator=g, dtype=torch.float64) - 1.0) for n in (50, 1, 77)]
    codes = SparseCodes(30, numba=numba)
    for f in chunks:
        codes.add(f)
    P = torch.randn(31, 6, generator=g, dtype=torch.float64)
    f1 = torch.cat([torch.cat(chunks), torch.ones(128, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(codes.gram_times(P), f1.T @ (f1 @ P), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("numba", [True, False])
def test_cg_float32_products_and_the_true_residual(numba):
    """fit.cg: float32 products are float64's within float32 rounding; solve_cg judges the TRUE
    residual (float64 products) and turns to float64 products when float32's cannot reach tol."""
    from stitchkit.fit.cg import SparseCodes, solve_cg

    g = torch.Generator().manual_seed(3)
    chunks = [torch.relu(torch.randn(n, 40, generator=g, dtype=torch.float64) - 1.0) for n in (300, 7, 200)]
    codes = SparseCodes(40, numba=numba)
    for f in chunks:
        codes.add(f)
    P = torch.randn(41, 5, generator=g, dtype=torch.float64)
    exact = codes.gram_times(P)
    with pytest.raises(RuntimeError, match="before the first product"):
        codes.add(chunks[0])
    fast = codes.gram_times(P, torch.float32)
    assert fast.dtype == torch.float64 and not torch.equal(fast, exact)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-4)
    f1 = torch.cat([torch.cat(chunks), torch.ones(507, 1, dtype=torch.float64)], 1)
    A = f1.T @ f1
    reg = torch.full((41,), 1e-3, dtype=torch.float64)
    rhs = f1.T @ torch.randn(507, 5, generator=g, dtype=torch.float64)
    best = torch.linalg.solve(A + torch.diag(reg), rhs)
    zeros = torch.zeros_like(rhs)
    for tol in (1e-5, 1e-12):  # float32 products, refined rounds reach far below float32's rounding
        X, report = solve_cg(codes, rhs, A.diagonal().clone(), reg, zeros, tol=tol, max_iter=400)
        true = ((rhs - (A + torch.diag(reg)) @ X).norm(dim=0) / rhs.norm(dim=0)).max()
        assert report.converged and report.residual <= tol and float(true) <= tol * 1.01
        assert report.products == "float32", report
        torch.testing.assert_close(X, best, rtol=tol * 1e3, atol=tol * 1e3)

    # Products too coarse for a round to halve the residual: the rounds turn to float64's.
    plain = SparseCodes.gram_times

    def coarse(self, P, dtype=torch.float64):
        out = plain(self, P, dtype)
        if dtype == torch.float64:
            return out
        return out * (1 + torch.randn(out.shape, generator=g, dtype=out.dtype))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SparseCodes, "gram_times", coarse)
        X, report = solve_cg(codes, rhs, A.diagonal().clone(), reg, zeros, tol=1e-10, max_iter=400)
    assert report.converged and report.products == "float64", report
    torch.testing.assert_close(X, best, rtol=1e-7, atol=1e-7)


def test_lstsq_by_conjugate_gradients_equals_the_dense_solve():
    """solver='cg' (fit.cg: no d_sae x d_sae matrix) reaches the float64 normal equations'
    solution within its tolerance; 'auto' takes CG only where the dense solve would not fit the
    stage's memory."""
    from stitchkit.fit.retrain import lstsq_solver

    sae = noisy_sae(seed=5, d_sae=60)
    x = torch.randn(1500, 8, generator=torch.Generator().manual_seed(6)) + 0.2
    best = float64_refit(sae, x)
    res = retrain_decoder(sae, list(x.split(400)), method="lstsq", solver="cg", tol=1e-11, mse_tol=None)
    assert res.algorithm.startswith("conjugate gradients") and "converged" in res.algorithm
    assert 0 < res.steps < 500
    torch.testing.assert_close(res.sae.W_dec.double(), best[:-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.sae.b_dec.double(), best[-1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(res.sae.encode(x), sae.encode(x), atol=1e-5)  # the codes are unchanged
    dense = retrain_decoder(sae, x, method="lstsq", solver="dense")
    assert dense.algorithm == "dense normal equations"
    assert evaluate(res.sae, x).mse == pytest.approx(evaluate(dense.sae, x).mse, rel=1e-6)
    assert lstsq_solver(60, 8, torch.device("cpu")) == "dense"
    assert lstsq_solver(98_304, 768, torch.device("cpu")) == "cg"  # 310 GB dense: never on a laptop


def test_cg_stops_on_the_objective_gap_with_the_least_squares_mse():
    """retrain_decoder(solver='cg', mse_tol=...) stops once the objective's recent decreases
    (its estimated gap to the minimum) are under mse_tol of it: the MSE is the dense solve's to
    about mse_tol, in fewer iterations than driving every column's residual to tol when features
    are nearly collinear (each feature twice, the copy's encoder column 10% off)."""
    base = noisy_sae(seed=9, d_in=10, d_sae=40)
    with torch.no_grad():
        W_enc = torch.cat([base.W_enc, base.W_enc * 1.1], 1)
        sae = random_sae(d_in=10, d_sae=80, seed=9, name="twins")
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(torch.cat([base.b_enc, base.b_enc]))
    x = torch.randn(4000, 10, generator=torch.Generator().manual_seed(10)) + 0.3
    f = sae.encode(x).detach().double()
    lam = 1e-6 * float(f.pow(2).sum(0).mean())  # retrain_decoder's ridge, towards the old rows

    def objective(fit):  # what CG minimises: squared error plus the ridge term, in float64
        W, b = fit.sae.W_dec.detach().double(), fit.sae.b_dec.detach().double()
        err = x.double() - f @ W - b
        return float(err.pow(2).sum()) + lam * float((W - sae.W_dec.detach().double()).pow(2).sum())

    best = float64_refit(sae, x)
    f1 = torch.cat([f, torch.ones(len(f), 1, dtype=torch.float64)], 1)
    least = float((x.double() - f1 @ best).pow(2).sum()) + lam * float(
        (best[:-1] - sae.W_dec.detach().double()).pow(2).sum()
    )
    full = retrain_decoder(sae, list(x.split(1000)), method="lstsq", solver="cg", tol=1e-9, mse_tol=None,
                           max_iter=3000)  # fmt: skip
    quick = retrain_decoder(sae, list(x.split(1000)), method="lstsq", solver="cg", tol=1e-9, mse_tol=1e-6,
                            max_iter=3000)  # fmt: skip
    assert "objective within" in quick.algorithm and "converged" in full.algorithm
    assert quick.steps < full.steps
    assert objective(full) == pytest.approx(least, rel=1e-7)
    assert least <= objective(quick) <= least * (1 + 2e-6)  # mse_tol 1e-6: "about", measured 6.8e-7


def test_adam_through_the_nonzeros_equals_the_dense_steps(monkeypatch):
    """On the CPU, Adam's decode and gradient over sparse codes go through their nonzeros; the
    steps are the dense product's within float32 rounding."""
    import stitchkit.fit.retrain as retrain

    sae = noisy_sae(seed=7, d_in=16, d_sae=400)
    with torch.no_grad():
        sae.b_enc.sub_(12.0)  # about 2% of the features fire: under the nonzeros' density rule
    x = torch.randn(1200, 16, generator=torch.Generator().manual_seed(8))
    assert 0 < (sae.encode(x) > 0).float().mean() < 0.03
    calls = []
    seen = retrain.nonzeros_cpu
    monkeypatch.setattr(retrain, "nonzeros_cpu", lambda f: calls.append(1) or seen(f))
    sparse = retrain_decoder(sae, list(x.split(300)), epochs=2, lr=1e-2)
    assert len(calls) == 8
    monkeypatch.setattr(retrain, "nonzeros_cpu", lambda f: None)
    dense = retrain_decoder(sae, list(x.split(300)), epochs=2, lr=1e-2)
    assert evaluate(sparse.sae, x).mse < evaluate(sae, x).mse
    torch.testing.assert_close(sparse.sae.W_dec, dense.sae.W_dec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sparse.sae.b_dec, dense.sae.b_dec, rtol=1e-4, atol=1e-5)


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
