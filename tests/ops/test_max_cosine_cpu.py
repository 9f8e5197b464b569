"""The CPU screens, bf16 (stitchkit.ops.max_cosine.cpu) and int8 (.int8_cpu), against the float64
oracle and the fp32 row products they promise: awkward shapes, exact ties, keys within the screen's
margin, the fallback, and parent links at and just inside the threshold; the int8 screen's proven
error bound at both of its key ranges; through max_cosine / parent_links with each screen, and with
the screens forced off."""

import pytest
import torch

import stitchkit as sk
from stitchkit.ops import dispatch
from stitchkit.ops.max_cosine import cpu as C
from stitchkit.ops.max_cosine import int8_cpu as I
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


MAX_IP = {"bf16": C.max_ip_screened_cpu, "int8": I.max_ip_int8_cpu}
PAIRS = {"bf16": C.pairs_above_screened_cpu, "int8": I.pairs_above_int8_cpu}


@pytest.fixture(params=[None, 64], ids=["key-range-here", "key-range-64"])
def key_range(request, monkeypatch):
    """The int8 screen at this CPU's key range, and at 64 (the pre-VNNI range, exact everywhere)."""
    if request.param is not None:
        monkeypatch.setattr(I, "int8_key_range", lambda: request.param)
    if I.int8_key_range() is None:
        pytest.skip("no exact int8 product on this CPU")
    return I.int8_key_range()


@pytest.mark.parametrize("screen", ["bf16", "int8"])
@pytest.mark.parametrize("fq, fk, d, rows", SHAPES)
def test_screened_is_the_fp32_winner(fq, fk, d, rows, screen, key_range):
    q, k = unit_rows(fq, d, 3), unit_rows(fk, d, 4)
    if fk > 3:
        k[fk // 2 :: 3] = k[fk // 3].clone()  # exact duplicates: ties go to the smallest index
    values, indices = MAX_IP[screen](q, k, rows=rows)
    check_max(q, k, "fp32", values, indices)
    best, first = first_fp32_winner(q, k)
    assert torch.equal(values, best) and torch.equal(indices, first)


@pytest.mark.parametrize("screen", ["bf16", "int8"])
def test_keys_within_the_margin_are_decided_in_fp32(screen, key_range):
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
    values, indices = MAX_IP[screen](q, k, rows=8)
    best, first = first_fp32_winner(q, k)
    assert torch.equal(values, best) and torch.equal(indices, first)


@pytest.mark.parametrize("screen", ["bf16", "int8"])
def test_too_many_candidates_falls_back_to_the_fp32_gemm(screen, key_range):
    q, k = unit_rows(20, 8, 8), unit_rows(1, 8, 9).repeat(300, 1)  # 300 equal keys
    values, indices = MAX_IP[screen](q, k, limit_per_row=4)
    check_max(q, k, "fp32", values, indices)
    assert torch.equal(indices, torch.zeros(20, dtype=torch.int64))


@pytest.mark.parametrize("screen", ["bf16", "int8"])
@pytest.mark.parametrize("d", [1, 3, 48])
def test_pairs_at_and_just_inside_the_threshold(d, screen, key_range):
    t = 0.7
    q = unit_rows(30, d, 10)
    k = unit_rows(90, d, 11)
    if d > 1:  # keys at cos t - 1e-4, t + 1e-6, t + 1e-4 of query 0 (within the screen's margin)
        e = torch.linalg.qr(torch.stack([q[0].double(), torch.randn(d, dtype=torch.float64)], 1))[0]
        e0, e1 = e[:, 0] * torch.sign(e[:, 0] @ q[0].double()), e[:, 1]
        for c in (t - 1e-4, t + 1e-6, t + 1e-4):
            k = torch.cat([k, (c * e0 + (1 - c * c) ** 0.5 * e1).float()[None]])
    with dispatch.configure(cpu_screen=screen):
        got = sk.parent_links(k, q, t, backend="cpu")
    want = sk.parent_links(k, q, t, backend="torch")
    assert torch.equal(got.child, want.child) and torch.equal(got.parent, want.parent)
    assert torch.equal(got.cos, want.cos)
    i, j, _ = PAIRS[screen](k, q, t, rows=7)  # the candidates hold every pair above t, in fp32
    want_pairs = {(int(a), int(b)) for a, b in zip(want.child, want.parent)}
    assert want_pairs <= {(int(a), int(b)) for a, b in zip(i, j)}
    exact = q.double() @ k.double().t()
    assert ((exact.t()[got.child, got.parent]) > t - 1e-6).all()


@pytest.mark.parametrize("screen", ["bf16", "int8", "none"])
def test_through_max_cosine_with_each_screen_and_none(screen, key_range):
    small, large = unit_rows(70, 24, 12), unit_rows(333, 24, 13)
    large[:14] = small[::5].clone()  # some exact matches, the rest random
    with dispatch.configure(cpu_screen=screen):
        for op in ("max", "links"):
            chosen = dispatch.similarity_backend("auto", torch.device("cpu"), op)
            assert (chosen == "cpu") == (screen != "none")
        mc = sk.max_cosine(large, small)
        links = sk.parent_links(large, small, 0.5)
    ref = N.max_ip_reference(large, small)
    exact = (large.double() @ small.double().t()).max(dim=1).values
    assert (mc.values.double() - exact).abs().max() <= 1e-6
    close = (ref[0].double() - mc.values.double()).abs() <= 1e-6
    assert close.all() and (torch.equal(mc.indices, ref[1]) or screen != "none")
    want = sk.parent_links(large, small, 0.5, backend="torch")
    assert torch.equal(links.child, want.child) and torch.equal(links.parent, want.parent)


def test_kernels_off_turns_the_screen_off(monkeypatch):
    monkeypatch.setenv("STITCHKIT_KERNELS", "0")
    for screen in ("bf16", "int8"):
        with dispatch.configure(cpu_screen=screen):
            assert dispatch.similarity_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("screen", ["bf16", "int8"])
def test_pairs_of_rows_with_more_candidates_than_the_scan_keeps(screen, key_range):
    q = unit_rows(10, 16, 14)
    k = torch.cat([q[:1].repeat(100, 1), unit_rows(50, 16, 15)])  # query 0: 100 equal parents
    with dispatch.configure(cpu_screen=screen):
        got = sk.parent_links(q, k, 0.7, backend="cpu")
    want = sk.parent_links(q, k, 0.7, backend="torch")
    assert torch.equal(got.child, want.child) and torch.equal(got.parent, want.parent)
    assert int((got.child == 0).sum()) >= 100


@pytest.mark.parametrize("d", [1, 7, 64, 384])
def test_int8_scores_are_within_the_proven_margin(d, key_range):
    """Every pair's int8 score a_i b acc_ij is within m_i of the float64 product, including rows the
    bound is tightest on: one-hot rows (max |x| = 1), one spike and a flat rest, constant rows."""
    q, k = unit_rows(60, d, 16), unit_rows(90, d, 17)
    q[0] = 0
    q[0, 0] = 1  # one-hot
    q[1] = 1 / d**0.5  # constant
    if d > 1:
        q[2] = 0.1 / (d - 1) ** 0.5
        q[2, d // 2] = (1 - 0.01) ** 0.5  # a spike and a flat rest
        k[:3] = -q[:3]
        k[3] = q[2]
    screen = I._Screen(k, 64, 4)
    S, qq = screen.scores_of(q)
    assert int(S.abs().max()) <= d * 127 * key_range
    exact = q.double() @ k.double().t()
    err = (S.double() * screen.unit(qq)[:, None] - exact).abs()
    margin = I._margins(qq, screen.keys, d)
    assert (err <= margin[:, None]).all()
    assert (err.max(dim=1).values > 0).any()  # the bound is not vacuous: the screen does round


def test_int8_key_range_is_exact_here_or_absent():
    r = I.int8_key_range()
    assert r in I.KEY_RANGES or r is None
    if r is not None:  # the range it found is exact at the extremes of both signs
        g = torch.Generator().manual_seed(18)
        a = torch.randint(-127, 128, (40, 96), generator=g, dtype=torch.int8)
        b = torch.randint(-r, r + 1, (96, 50), generator=g, dtype=torch.int8)
        b[:, 0], a[0] = r, 127
        out = torch.empty(40, 50, dtype=torch.int32)
        torch._int_mm(a, b, out=out)
        assert torch.equal(out.long(), a.long() @ b.long())
        assert I.int8_screen_available(2**31 // (127 * r) - 1)
        assert not I.int8_screen_available(2**31 // (127 * r) + 1)  # int32 sums that could overflow


def test_the_table_picks_a_screen_per_cpu_kind(monkeypatch):
    """similarity_screen follows bench/README's table: AMX -> bf16; links elsewhere -> int8 where
    the int8 product is exact (either key range); max cosine elsewhere -> bf16 with bf16 units,
    else int8 with full-range keys (VNNI), else none."""
    cases = [  # (amx, bf16 units, int8 key range) -> (max, links)
        ((True, True, 127), ("bf16", "bf16")),
        ((False, True, 127), ("bf16", "int8")),
        ((False, False, 127), ("int8", "int8")),
        ((False, False, 64), (None, "int8")),
        ((False, True, None), ("bf16", "bf16")),
        ((False, False, None), (None, None)),
    ]
    for (amx, bf16, key_range), want in cases:
        monkeypatch.setattr(dispatch, "cpu_has_amx", lambda amx=amx: amx)
        monkeypatch.setattr(dispatch, "cpu_has_bf16", lambda bf16=bf16: bf16)
        monkeypatch.setattr(I, "int8_key_range", lambda key_range=key_range: key_range)
        with dispatch.configure(cpu_screen=None, cpu_bf16=None):
            assert (dispatch.similarity_screen("max"), dispatch.similarity_screen("links")) == want
            assert dispatch.similarity_screen("max", required=True) in ("bf16", "int8")
    with dispatch.configure(cpu_screen="none"):
        assert dispatch.similarity_screen("links") is None
