"""Triton max_ip / pairs_above kernels against the torch reference and a float64 oracle.

On a machine without CUDA these run through TRITON_INTERPRET=1 (set in conftest.py) at small,
awkward shapes; with CUDA they also run on the GPU at larger shapes."""

import pytest
import torch

from stitchkit.ops.dispatch import triton_interpreting
from stitchkit.ops.max_cosine import naive as N
from stitchkit.ops.max_cosine import triton as K
from tests.tolerances import MAX_COSINE

# The interpreter is process-wide: CPU tensors when interpreting (CI), CUDA tensors otherwise.
DEVICES = ["cpu"] if triton_interpreting() else ["cuda"]


def unit_rows(n, d, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).float().to(device)


def oracle(q, k):
    return q.double().cpu() @ k.double().cpu().t()


def check_max(q, k, precision, values, indices):
    sims = oracle(q, k)
    best = sims.max(dim=1).values
    values, indices = values.cpu().double(), indices.cpu()
    assert values.shape == (q.shape[0],) and indices.dtype == torch.int64
    assert torch.isfinite(values).all()
    tol = MAX_COSINE[precision]
    assert (values - best).abs().max() <= tol
    chosen = sims.gather(1, indices[:, None]).squeeze(1)
    # Index exact unless another key is within the tolerance of the best.
    assert ((best - chosen) <= 2 * tol).all()
    if precision == "fp32":
        runner_up = sims.topk(min(2, k.shape[0]), dim=1).values[:, -1]
        clear = (best - runner_up) > 2 * tol
        assert torch.equal(indices[clear], sims.argmax(dim=1)[clear])


SHAPES = [(1, 1, 1), (1, 37, 5), (33, 17, 19), (50, 70, 3), (17, 100, 40), (64, 64, 16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fq, fk, d", SHAPES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_max_ip_triton_matches_oracle(device, fq, fk, d, precision):
    q, k = unit_rows(fq, d, 1, device), unit_rows(fk, d, 2, device)
    values, indices = K.max_ip_triton(q, k, precision)
    check_max(q, k, precision, values, indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_split", [1, 2, 3, 7])
def test_max_ip_triton_key_splits_agree(device, n_split):
    q, k = unit_rows(21, 9, 3, device), unit_rows(75, 9, 4, device)
    values, indices = K.max_ip_triton(q, k, "fp32", n_split=n_split)
    ref_v, ref_i = N.max_ip_reference(q, k)
    assert torch.allclose(values, ref_v, atol=1e-5)
    assert torch.equal(indices, ref_i)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_pick_the_smallest_key_index(device):
    k = unit_rows(40, 8, 5, device)
    k[29] = k[3]  # exact duplicates, in different key tiles
    k[30] = k[3]
    k[11] = k[10]  # duplicates in the same tile
    q = torch.cat([k[[3, 10, 29]], unit_rows(5, 8, 6, device)])
    for n_split in (1, 3):
        values, indices = K.max_ip_triton(q, k, "fp32", n_split=n_split)
        assert indices[:3].tolist() == [3, 10, 3]
        assert torch.allclose(values[:3].cpu(), torch.ones(3), atol=1e-5)
    ref_v, ref_i = N.max_ip_reference(q, k)
    assert ref_i[:3].tolist() == [3, 10, 3]


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_fully_written_over_poison(device, poison_empty):
    # The kernel writes into torch.empty buffers: make them NaN/garbage first.
    q, k = unit_rows(19, 6, 7, device), unit_rows(23, 6, 8, device)
    poison = poison_empty()
    values, indices = K.max_ip_triton(q, k, "fp32", n_split=2)
    poison.undo()
    check_max(q, k, "fp32", values, indices)


def pair_set(i, j):
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fq, fk, d", [(1, 1, 1), (33, 17, 19), (50, 70, 3), (40, 31, 2)])
def test_pairs_triton_matches_oracle(device, fq, fk, d):
    q, k = unit_rows(fq, d, 9, device), unit_rows(fk, d, 10, device)
    sims = oracle(q, k)
    for threshold, n_split in ((-0.5, None), (0.0, 2), (0.3, 3), (0.9, None)):
        i, j, v = K.pairs_above_triton(q, k, threshold, "fp32", n_split=n_split)
        # Exclude pairs within rounding of the threshold from the comparison.
        near = (sims - threshold).abs() < 1e-5
        want = pair_set(*(((sims > threshold) & ~near).nonzero(as_tuple=True)))
        got = pair_set(i, j) - pair_set(*near.nonzero(as_tuple=True))
        assert got == want
        assert torch.allclose(v.cpu().double(), sims[i.cpu(), j.cpu()], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_pairs_buffer_overflow_grows_and_retries(device):
    q, k = unit_rows(30, 4, 11, device), unit_rows(45, 4, 12, device)
    i, j, v = K.pairs_above_triton(q, k, -1.5, "fp32", capacity=7)  # every pair: 1350 > 7
    assert len(i) == 30 * 45
    assert pair_set(i, j) == {(a, b) for a in range(30) for b in range(45)}


@pytest.mark.parametrize("device", DEVICES)
def test_pairs_none_found(device):
    q, k = unit_rows(5, 3, 13, device), unit_rows(6, 3, 14, device)
    i, j, v = K.pairs_above_triton(q, k, 1.5, "fp32")
    assert len(i) == len(j) == len(v) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_pairs_per_row_thresholds_and_limit(device):
    q, k = unit_rows(37, 5, 21, device), unit_rows(29, 5, 22, device)
    sims = oracle(q, k)
    th = torch.linspace(-0.8, 0.9, 37)
    i, j, _ = K.pairs_above_triton(q, k, th.to(device), "fp32")
    near = (sims - th.double()[:, None]).abs() < 1e-5
    want = pair_set(*(((sims > th.double()[:, None]) & ~near).nonzero(as_tuple=True)))
    assert pair_set(i, j) - pair_set(*near.nonzero(as_tuple=True)) == want
    assert K.pairs_above_triton(q, k, th.to(device), "fp32", limit=len(i) - 1) is None
    assert len(K.pairs_above_triton(q, k, th.to(device), "fp32", limit=len(i))[0]) == len(i)


def fp32_row_products(q, k):
    """Every q[i] . k[j] summed in fp32 the way the screened kernel's check sums it."""
    i, j = torch.meshgrid(torch.arange(q.shape[0]), torch.arange(k.shape[0]), indexing="ij")
    return (q[i.flatten()] * k[j.flatten()]).sum(dim=1).view(q.shape[0], k.shape[0]).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fq, fk, d", [(1, 1, 1), (1, 37, 5), (33, 17, 19), (17, 100, 40), (50, 70, 3)])
def test_max_ip_screened_is_the_fp32_argmax(device, fq, fk, d):
    q, k = unit_rows(fq, d, 23, device), unit_rows(fk, d, 24, device)
    k[fk // 2 :: 3] = k[fk // 3].clone()  # exact duplicates: ties go to the smallest index
    values, indices = K.max_ip_screened_triton(q, k)
    check_max(q, k, "fp32", values, indices)
    ip = fp32_row_products(q, k)
    best = ip.max(dim=1).values
    assert torch.equal(values.cpu(), best)
    first = (ip == best[:, None]).float().argmax(dim=1)  # smallest index attaining the max
    assert torch.equal(indices.cpu(), first)


@pytest.mark.parametrize("device", DEVICES)
def test_max_ip_screened_falls_back_past_the_limit(device, monkeypatch):
    # d = 1: every key is +-1, so half the keys tie for every row's max.
    q, k = unit_rows(20, 1, 25, device), unit_rows(30, 1, 26, device)
    calls = []
    direct = K.max_ip_triton
    monkeypatch.setattr(K, "max_ip_triton", lambda *a, **kw: calls.append(a[2]) or direct(*a, **kw))
    values, indices = K.max_ip_screened_triton(q, k, limit=50)
    assert calls == ["bf16", "fp32"]  # the screen, then the direct fp32 kernel
    check_max(q, k, "fp32", values, indices)
    calls.clear()
    values, indices = K.max_ip_screened_triton(q, k)
    assert calls == ["bf16"]
    ip = fp32_row_products(q, k)
    assert torch.equal(indices.cpu(), (ip == ip.max(dim=1).values[:, None]).float().argmax(dim=1))


def test_reference_chunking_does_not_change_results():
    q, k = unit_rows(37, 11, 15), unit_rows(29, 11, 16)
    full = N.max_ip_reference(q, k)
    for rows in (1, 5, 36):
        part = N.max_ip_reference(q, k, chunk_rows=rows)
        assert torch.allclose(part[0], full[0], atol=1e-6)  # BLAS blocking moves the last bit
        assert torch.equal(part[1], full[1])
    a = N.pairs_above_reference(q, k, 0.2)
    b = N.pairs_above_reference(q, k, 0.2, chunk_rows=4)
    assert pair_set(a[0], a[1]) == pair_set(b[0], b[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_gpu_larger_shapes(precision):
    q, k = unit_rows(3000, 384, 17, "cuda"), unit_rows(1500, 384, 18, "cuda")
    values, indices = K.max_ip_triton(q, k, precision)
    check_max(q, k, precision, values, indices)
    if precision == "fp32":
        check_max(q, k, "fp32", *K.max_ip_screened_triton(q, k))
    i, j, v = K.pairs_above_triton(q, k, 0.15, precision)
    sims = oracle(q, k)
    clear = (sims - 0.15).abs() > 2 * MAX_COSINE[precision]
    want = pair_set(*((sims > 0.15) & clear).nonzero(as_tuple=True))
    got = pair_set(i, j) - pair_set(*(~clear).nonzero(as_tuple=True))
    assert got == want
