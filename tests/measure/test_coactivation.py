"""Co-activation similarity (stitchkit.measure.coactivation) against dense cosines, from the dense
features and from the sparse codes."""

import pytest
import torch

from stitchkit import SAE, activation_similarity
from stitchkit.measure import coactivation as coact_module
from stitchkit.measure.coactivation import CoactivationAccumulator
from stitchkit.ops.dispatch import configure
from tests.helpers import DEVICE, pair


def test_activation_similarity_from_codes_matches_dense(monkeypatch):
    g = torch.Generator().manual_seed(7)
    small, large = SAE(10, 13, name="s", generator=g), SAE(10, 29, name="l", generator=g)
    with torch.no_grad():
        small.b_enc.fill_(-0.5)
        large.b_enc.fill_(-0.8)
    small, large = small.to(DEVICE), large.to(DEVICE)
    x = torch.randn(120, 10, generator=g).to(DEVICE)
    with configure(kernels=False):
        dense = activation_similarity(large, small, [x[:50], x[50:]])
    calls = []  # a spy on the co-activation of the codes (behaviour unchanged)
    real = coact_module.coactivation
    monkeypatch.setattr(coact_module, "coactivation", lambda *a: calls.append(1) or real(*a))
    # The codes path even without the csrc build (the dispatcher then runs the reference).
    with configure(route="triton", csrc=True):
        assert CoactivationAccumulator(large, small).codes
        codes = activation_similarity(large, small, [x[:50], x[50:]])
    assert len(calls) == 2  # one per batch: the codes path ran
    live = dense.indices >= 0
    assert torch.equal(codes.indices[live], dense.indices[live])
    torch.testing.assert_close(codes.values[live], dense.values[live], rtol=1e-5, atol=1e-5)


def test_activation_similarity_against_dense_cosines():
    small, large, x = pair()
    with torch.no_grad():
        large.b_enc[4] = -1e6  # a feature that never fires
    res = activation_similarity(large, small, [x[:300], x[300:]])
    f, g = large.encode(x), small.encode(x)
    cos = (f.T @ g) / (f.norm(dim=0)[:, None] * g.norm(dim=0)[None, :])
    for j in range(large.d_sae):
        if j == 4:
            assert res.indices[j] == -1 and torch.isnan(res.values[j])
            continue
        row = cos[j].nan_to_num(nan=-1.0)
        assert res.indices[j] == int(row.argmax())
        assert res.values[j].item() == pytest.approx(row.max().item(), rel=1e-6)
