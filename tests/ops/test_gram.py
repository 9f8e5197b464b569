"""The numba co-activation Gram (stitchkit.ops.gram.cpu) against its dense torch reference."""

import pytest
import torch

from stitchkit.ops.gram import SparseRows, gram_cpu, gram_is_sparse_enough, gram_reference, symmetrize_


def sparse(n, F, density, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, F, generator=g) * (torch.rand(n, F, generator=g) < density)
    if n > 2:
        f[1] = 0.0  # a token with no active feature
    if F > 2:
        f[:, 2] = 0.0  # a feature that never fires
    return f


@pytest.mark.parametrize("n,Ff,Fg", [(1, 1, 1), (37, 53, 19), (200, 7, 130), (0, 5, 4)])
def test_gram_matches_the_dense_reference(n, Ff, Fg):
    f, g = sparse(n, Ff, 0.2, seed=n), sparse(n, Fg, 0.3, seed=n + 1)
    torch.testing.assert_close(gram_cpu(f, g), gram_reference(f, g), rtol=1e-12, atol=1e-12)
    # Without g: f^T f's upper triangle only, added to what out holds.
    out = torch.full((Ff, Ff), 0.5, dtype=torch.float64)
    gram_cpu(f, out=out)
    ref = gram_reference(f)
    torch.testing.assert_close(torch.triu(out), torch.triu(ref) + torch.triu(torch.full_like(ref, 0.5)))
    lower = torch.ones(Ff, Ff, dtype=torch.bool).tril(-1)
    assert (out[lower] == 0.5).all()  # untouched


def test_gram_into_a_view_and_symmetrize_by_blocks():
    f = sparse(300, 23, 0.15, seed=4)
    A = torch.zeros(24, 24, dtype=torch.float64)
    gram_cpu(f, out=A[:-1, :-1])  # a view with row stride 24, as retrain_decoder passes
    A[:-1, -1] = 1.0
    symmetrize_(A, block=5)  # blocks that do not divide 24
    ref = gram_reference(f)
    torch.testing.assert_close(A[:-1, :-1], ref, rtol=1e-12, atol=1e-12)
    assert (A[-1, :-1] == 1.0).all() and torch.equal(A, A.T)


@pytest.mark.parametrize("n,F,d", [(1, 1, 1), (37, 53, 19), (0, 5, 4)])
def test_transposed_product_and_column_sums(n, F, d):
    f = sparse(n, F, 0.2, seed=n + F)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
    codes = SparseRows(f)
    out = torch.ones(F, d, dtype=torch.float64)
    codes.t_dense_into(x, out)
    torch.testing.assert_close(out, f.double().T @ x.double() + 1.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(codes.colsum(), f.double().sum(0), rtol=1e-12, atol=1e-12)


def test_gram_rejects_a_wrong_out():
    f = sparse(10, 6, 0.5, seed=1)
    with pytest.raises(ValueError, match=r"float64 CPU tensor \[6, 6\]"):
        gram_cpu(f, out=torch.zeros(6, 6))
    with pytest.raises(ValueError, match="x has 9 tokens, expected 10"):
        SparseRows(f).t_dense_into(torch.zeros(9, 3), torch.zeros(6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="other has 11 tokens, expected 10"):
        gram_cpu(f, sparse(11, 4, 0.5, seed=2))


def test_sparse_enough_follows_the_density():
    assert gram_is_sparse_enough(sparse(100, 1000, 0.01, seed=2))
    assert not gram_is_sparse_enough(sparse(100, 1000, 0.5, seed=3))
