"""The CPU bf16 screen (stitchkit.ops.max_cosine.cpu) against the float64 oracle and the fp32 row
products it promises: awkward shapes, exact ties, keys within the screen's margin, the fallback,
and parent links at and just inside the threshold; through max_cosine / parent_links with the
screen on, and with it forced off."""

import pytest
import torch

import stitchkit as sk
from stitchkit.ops import dispatch
from stitchkit.ops.max_cosine import cpu as C
from stitchkit.ops.max_cosine import naive as N
from tests.ops.test_max_cosine import check_max, fp32_row_products, unit_rows


def first_fp32_winner(q, k):
    ip = fp32_row_products(q, k)
    best = ip.max(dim=1).values
    return best, (ip == best[:, None]).float().argmax(dim=1)


SHAPES = [
    (1, 1, 1, None),
    (1, 37, 5, None),
    (33, 17, 19, 7),
    (50, 70, 3, 16),
    (17, 100, 40, 5),
    (300, 129, 64, None),
]


@pytest.mark.parametrize("fq, fk, d, rows", SHAPES)
def test_screened_is_the_fp32_winner(fq, fk, d, rows):
    q, k = unit_rows(fq, d, 3), unit_rows(fk, d, 4)
    if fk > 3:
        k[fk // 2 :: 3] = k[fk // 3].clone()  # exact duplicates: ties go to the smallest index
    values, indices = C.max_ip_screened_cpu(q, k, rows=rows)
    check_max(q, k, "fp32", values, indices)
    best, first = first_fp32_winner(q, k)
    assert torch.equal(values, best) and torch.equal(indices, first)


def test_keys_within_the_margin_are_decided_in_fp32():
    d = 64
    q = unit_rows(40, d, 5)
    base = unit_rows(40, d, 6)
    # For each query, keys whose cosines with it differ by less than the screen's margin: the
    # query itself nudged by 1e-3 .. 1e-6 along random directions (bf16 cannot tell them apart).
    keys = [base]
    g = torch.Generator().manual_seed(7)
    for eps in (1e-3, 3e-4, 1e-4, 1e-5, 1e-6):
        k = q + eps * torch.randn(q.shape, generator=g)
        keys.append(k / k.norm(dim=1, keepdim=True))
    k = torch.cat(keys)
    assert C.cpu_screen_margin(d) > 1e-3
    values, indices = C.max_ip_screened_cpu(q, k, rows=8)
    best, first = first_fp32_winner(q, k)
    assert torch.equal(values, best) and torch.equal(indices, first)


def test_too_many_candidates_falls_back_to_the_fp32_gemm():
    q, k = unit_rows(20, 8, 8), unit_rows(1, 8, 9).repeat(300, 1)  # 300 equal keys
    values, indices = C.max_ip_screened_cpu(q, k, limit_per_row=4)
    check_max(q, k, "fp32", values, indices)
    assert torch.equal(indices, torch.zeros(20, dtype=torch.int64))


@pytest.mark.parametrize("d", [1, 3, 48])
def test_pairs_at_and_just_inside_the_threshold(d):
    t = 0.7
    q = unit_rows(30, d, 10)
    k = unit_rows(90, d, 11)
    if d > 1:  # keys at cos t - 1e-4, t + 1e-6, t + 1e-4 of query 0 (within the screen's margin)
        e = torch.linalg.qr(torch.stack([q[0].double(), torch.randn(d, dtype=torch.float64)], 1))[0]
        e0, e1 = e[:, 0] * torch.sign(e[:, 0] @ q[0].double()), e[:, 1]
        for c in (t - 1e-4, t + 1e-6, t + 1e-4):
            k = torch.cat([k, (c * e0 + (1 - c * c) ** 0.5 * e1).float()[None]])
    got = sk.parent_links(k, q, t, backend="cpu")
    want = sk.parent_links(k, q, t, backend="torch")
    assert torch.equal(got.child, want.child) and torch.equal(got.parent, want.parent)
    assert torch.equal(got.cos, want.cos)
    exact = q.double() @ k.double().t()
    assert ((exact.t()[got.child, got.parent]) > t - 1e-6).all()


@pytest.mark.parametrize("bf16_units", [True, False])
def test_through_max_cosine_with_the_screen_on_and_off(bf16_units):
    small, large = unit_rows(70, 24, 12), unit_rows(333, 24, 13)
    large[:14] = small[::5].clone()  # some exact matches, the rest random
    with dispatch.configure(cpu_bf16=bf16_units):
        assert (dispatch.similarity_backend("auto", torch.device("cpu")) == "cpu") == bf16_units
        mc = sk.max_cosine(large, small)
        links = sk.parent_links(large, small, 0.5)
    ref = N.max_ip_reference(large, small)
    exact = (large.double() @ small.double().t()).max(dim=1).values
    assert (mc.values.double() - exact).abs().max() <= 1e-6
    close = (ref[0].double() - mc.values.double()).abs() <= 1e-6
    assert close.all() and (torch.equal(mc.indices, ref[1]) or bf16_units)
    want = sk.parent_links(large, small, 0.5, backend="torch")
    assert torch.equal(links.child, want.child) and torch.equal(links.parent, want.parent)


def test_kernels_off_turns_the_screen_off(monkeypatch):
    monkeypatch.setenv("STITCHKIT_KERNELS", "0")
    with dispatch.configure(cpu_bf16=True):
        assert dispatch.similarity_backend("auto", torch.device("cpu")) == "torch"


def test_pairs_of_rows_with_more_candidates_than_the_scan_keeps():
    q = unit_rows(10, 16, 14)
    k = torch.cat([q[:1].repeat(100, 1), unit_rows(50, 16, 15)])  # query 0: 100 equal parents
    got = sk.parent_links(q, k, 0.7, backend="cpu")
    want = sk.parent_links(q, k, 0.7, backend="torch")
    assert torch.equal(got.child, want.child) and torch.equal(got.parent, want.parent)
    assert int((got.child == 0).sum()) >= 100
