"""Insertion dMSE (stitchkit.measure.insertion) against explicitly built hybrid SAEs."""

import pytest
import torch

from stitchkit import (
    evaluate,
    insert,
    marginal_delta_mse,
)
from tests.helpers import pair


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "batchtopk"])
def test_marginal_delta_mse_equals_explicit_hybrids(activation):
    base, donor, x = pair(donor_activation=activation)
    batches = [x[:250], x[250:]]
    dmse = marginal_delta_mse(base, donor, batches)
    assert dmse.shape == (29,) and dmse.dtype == torch.float64
    mse0 = evaluate(base, x).mse
    for j in range(29):
        hybrid = insert(base, donor, [j])
        assert hybrid.provenance.entries()[-1] == ("donor", j)
        assert dmse[j].item() == pytest.approx(evaluate(hybrid, x).mse - mse0, rel=1e-9, abs=1e-9)
    sub = marginal_delta_mse(base, donor, x, features=[28, 3, 3])
    assert torch.allclose(sub, dmse[[28, 3, 3]], rtol=1e-12)


def test_marginal_delta_mse_float32_within_tolerance():
    base, donor, x = pair(dtype=torch.float32)
    dmse = marginal_delta_mse(base, donor, x)
    mse0 = evaluate(base, x).mse
    for j in (0, 7, 28):
        explicit = evaluate(insert(base, donor, [j]), x).mse - mse0
        assert dmse[j].item() == pytest.approx(explicit, abs=1e-5 * mse0)


def test_sparse_codes_take_the_nonzeros_and_equal_float64():
    """Codes under 3% nonzero on the CPU route take r . w_j only where f_j fires
    (ops.codes.cpu.rowdots_cpu); the result equals the formula in float64 on dense tensors."""
    from stitchkit.ops.codes.cpu import nonzeros_cpu, rowdots_cpu
    from tests.helpers import random_sae

    base = random_sae("relu", d_in=16, d_sae=300, seed=1)
    donor = random_sae("relu", d_in=16, d_sae=500, seed=2)
    with torch.no_grad():
        base.b_enc -= 12.0
        donor.b_enc -= 12.0
    x = torch.randn(900, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f = donor.encode(x)
        assert 0 < (f > 0).float().mean() < 0.03  # the sparse branch
        nz = nonzeros_cpu(f)
        r = x - base(x)
        dense = (r @ donor.W_dec.T)[nz.rows, nz.cols]
        torch.testing.assert_close(rowdots_cpu(nz.rows, nz.cols, r, donor.W_dec, block_bytes=4096), dense,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        fd, rd, wd = f.double(), (x.double() - base(x).double()), donor.W_dec.double()
        want = (fd.pow(2) * wd.pow(2).sum(1) - 2 * fd * (rd @ wd.T)).mean(0)
    got = marginal_delta_mse(base, donor, [x[:400], x[400:]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for j in f.sum(0).nonzero().flatten()[:3].tolist():
        explicit = evaluate(insert(base, donor, [j]), x).mse - evaluate(base, x).mse
        assert got[j].item() == pytest.approx(explicit, rel=1e-3, abs=1e-6)
