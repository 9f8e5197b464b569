"""Decoder similarity (stitchkit.stitch.similarity): every backend against float64."""

import math

import pytest
import torch

from stitchkit import (
    InvalidArgumentError,
    ShapeError,
    max_cosine,
    nearest_features,
    novel_fraction_sweep,
    parent_links,
)
from stitchkit.ops.dispatch import faiss_installed, triton_installed, triton_interpreting
from tests.helpers import random_sae

# CPU tensors throughout; Triton runs on them only through the interpreter (CI).
BACKENDS = (
    ["torch"]
    + (["faiss"] if faiss_installed() else [])
    + (["triton"] if triton_installed() and triton_interpreting() else [])
)


def rows(n, d, seed, scale=1.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale


def cos64(q, k):
    qn = q.double() / q.double().norm(dim=1, keepdim=True)
    kn = k.double() / k.double().norm(dim=1, keepdim=True)
    return qn @ kn.t()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_float64(backend):
    q, k = rows(60, 24, 1, scale=3.0), rows(45, 24, 2, scale=0.1)  # norms do not matter
    v, i = max_cosine(q, k, backend=backend)
    sims = cos64(q, k)
    assert v.dtype == torch.float32 and i.dtype == torch.int64
    assert torch.allclose(v.double(), sims.max(1).values, atol=1e-5)
    assert torch.equal(i, sims.argmax(1))  # random data: no near-ties


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_values_are_recomputed_in_fp32(backend, precision):
    q, k = rows(40, 16, 3), rows(30, 16, 4)
    v, i = max_cosine(q, k, backend=backend, precision=precision)
    sims = cos64(q, k)
    assert torch.allclose(v.double(), sims.gather(1, i[:, None]).squeeze(1), atol=1e-5)
    assert ((sims.max(1).values - v.double()) <= 2e-2).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_resolve_within_tolerance(backend):
    k = rows(20, 8, 5)
    k[13] = k[2] * 2.0  # same direction, different norm: an exact cosine tie
    q = torch.cat([k[2:3] * 0.5, rows(3, 8, 6)])
    v, i = max_cosine(q, k, backend=backend)
    assert i[0].item() in (2, 13)
    assert v[0].item() == pytest.approx(1.0, abs=1e-5)


def test_accepts_saes_and_names_them_in_errors():
    small, large = random_sae(d_sae=6, name="small"), random_sae(d_sae=9, seed=1, name="large")
    v, i = max_cosine(large, small, backend="torch")
    assert v.shape == (9,) and int(i.max()) < 6
    with torch.no_grad():
        small.W_dec[[1, 4]] = 0
    with pytest.raises(
        InvalidArgumentError, match=r"SAE 'small' \(W_dec\): 2 rows have zero norm \(rows \[1, 4\]"
    ):
        max_cosine(large, small)


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_zero_nan(backend):
    q, k = rows(5, 4, 7), rows(6, 4, 8)
    q[2] = 0
    k[0] = 0
    v, i = max_cosine(q, k, backend=backend, on_zero="nan")
    assert math.isnan(v[2]) and i[2] == -1
    sims = cos64(q, k)[:, 1:]
    ok = [0, 1, 3, 4]
    assert torch.equal(i[ok], sims[ok].argmax(1) + 1)  # zero key row 0 never chosen


def test_argument_errors():
    q = rows(3, 4, 9)
    with pytest.raises(ShapeError, match="width 4.*width 5"):
        max_cosine(q, rows(3, 5, 1))
    with pytest.raises(ShapeError, match="no rows"):
        max_cosine(q, rows(0, 4, 1))
    with pytest.raises(InvalidArgumentError, match="backend"):
        max_cosine(q, q, backend="cuda")
    with pytest.raises(InvalidArgumentError, match="precision"):
        max_cosine(q, q, precision="fp8")
    with pytest.raises(InvalidArgumentError, match="on_zero"):
        max_cosine(q, q, on_zero="skip")
    with pytest.raises(InvalidArgumentError, match="NaN/Inf"):
        max_cosine(torch.full((2, 4), float("nan")), q)
    with pytest.raises(InvalidArgumentError, match=r"threshold must lie in \(-1, 1\)"):
        parent_links(q, q, threshold=1.0)


def known_cosines(cosines, d=16, seed=0):
    """Key rows e_0..e_{m-1}; query row i has cosine cosines[i] with key 0 and ~0 with the others."""
    m = len(cosines)
    basis = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )[0].t()
    keys = basis[:m]
    queries = torch.stack([c * basis[0] + math.sqrt(1 - c * c) * basis[m + i] for i, c in enumerate(cosines)])
    return queries.float(), keys.float()


@pytest.mark.parametrize("backend", BACKENDS)
def test_parent_links_on_either_side_of_known_cosines(backend):
    known = [0.65, 0.7, 0.72, 0.9, 0.3]
    q, k = known_cosines(known)
    for t, expected in [(0.69, {1, 2, 3}), (0.71, {2, 3}), (0.64, {0, 1, 2, 3}), (0.91, set())]:
        child, parent, cos = parent_links(q, k, t, backend=backend)
        assert set(child.tolist()) == expected
        assert set(parent.tolist()) <= {0}
        assert torch.allclose(
            cos.double(), torch.tensor([known[c] for c in child.tolist()], dtype=torch.float64), atol=1e-5
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_parent_links_match_reference_and_are_sorted(backend):
    q, k = rows(50, 3, 10), rows(30, 3, 11)  # low d: many links
    sims = cos64(q, k)
    child, parent, cos = parent_links(q, k, 0.7, backend=backend)
    near = (sims - 0.7).abs() < 1e-5
    want = set(zip(*((sims > 0.7) & ~near).nonzero(as_tuple=True)))
    want = {(int(a), int(b)) for a, b in want}
    got = set(zip(child.tolist(), parent.tolist())) - {tuple(map(int, p)) for p in near.nonzero()}
    assert got == want and len(got) > 50
    keys = list(zip(child.tolist(), (-cos).tolist()))
    assert keys == sorted(keys)


def test_parent_links_backends_agree_on_saes():
    small, large = random_sae(d_in=5, d_sae=20, seed=3), random_sae(d_in=5, d_sae=40, seed=4)
    results = [parent_links(large, small, 0.6, backend=b) for b in BACKENDS]
    for r in results[1:]:
        assert torch.equal(r.child, results[0].child) and torch.equal(r.parent, results[0].parent)
        assert torch.allclose(r.cos, results[0].cos, atol=1e-5)


def test_novel_fraction_sweep_counts_at_or_below_each_threshold():
    values = torch.tensor([0.2, 0.3, 0.5, 0.7, 0.71, 0.95, float("nan")])
    t, n = novel_fraction_sweep(values)
    assert t[0].item() == pytest.approx(0.3) and t[-1].item() == pytest.approx(0.95) and len(t) == 14
    expected = [int((values[:-1] <= x).sum()) for x in t.tolist()]
    assert n.tolist() == expected
    assert n[t.tolist().index(pytest.approx(0.7))] == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_backends_agree():
    q, k = rows(5000, 256, 20).cuda(), rows(3000, 256, 21).cuda()
    ref = max_cosine(q, k, backend="torch")
    auto = max_cosine(q, k)  # triton on CUDA
    assert torch.allclose(auto.values, ref.values, atol=1e-5)
    agree = (auto.indices == ref.indices).float().mean().item()
    assert agree > 0.999
    a = parent_links(q[:, :8], k[:, :8], 0.8, backend="torch")
    b = parent_links(q[:, :8], k[:, :8], 0.8)
    assert torch.equal(a.child, b.child) and torch.equal(a.parent, b.parent)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_nearest_features_is_the_fp32_top_k_with_ties(k):
    """nearest_features against brute force: every pair's fp32 row product, ranked by (-value,
    key index); exact duplicate keys give ties, broken by the smaller index; k past the key count
    is capped."""
    g = torch.Generator().manual_seed(21)
    q, key = torch.randn(57, 24, generator=g), torch.randn(33, 24, generator=g)
    key[10] = key[3] * 2.0  # the same direction at two rows: equal cosines
    key[20] = key[3]
    got = nearest_features(q, key, k)
    qn = q / q.double().norm(dim=1, keepdim=True).float()  # unit rows as the library makes them
    kn = key / key.double().norm(dim=1, keepdim=True).float()
    ip = (qn[:, None, :] * kn[None, :, :]).sum(dim=2)  # the fp32 row product of every pair
    kk = min(k, 33)
    for i in range(57):
        want = sorted(range(33), key=lambda j: (-float(ip[i, j]), j))[:kk]
        assert got.indices[i].tolist() == want
        assert torch.equal(got.values[i], ip[i, want])
    assert torch.equal(got.indices[:, 0], max_cosine(q, key).indices)
    exact = cos64(q, key)
    assert (got.values.double() - exact.gather(1, got.indices)).abs().max() < 1e-6
