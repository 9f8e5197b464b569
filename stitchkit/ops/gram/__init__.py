"""Products of mostly-zero activations on the CPU that touch only their nonzeros (numba; cpu.py), beside
their dense reference (naive.py).

    SparseRows(f [n, F]): f held as CSR by token and by feature, built once per batch, then
        .gram_into(out [F, Fg], other=None): out += f^T g for g = other (a SparseRows), or,
            without other, the upper triangle (b >= a) of f^T f only: half the work;
            symmetrize_() fills the lower one once, after the last batch;
        .t_dense_into(x [n, d], out [F, d]): out += f^T x;
        .colsum() -> [F]: sum over tokens.
        Outputs are float64 and accumulate in float64 (fp32 values, exact products).
    gram_cpu(f, g=None, out=None) -> out += f^T g (the upper triangle of f^T f without g).
    gram_reference(f, g=None) -> f^T g by a dense float64 GEMM.
    gram_is_sparse_enough(f, g=None) -> whether gram_cpu beats a dense GEMM on these inputs.

A dense f^T g costs n Ff Fg products whatever the sparsity; the nonzero products number
sum_t L0_f(t) L0_g(t). The kernels walk feature a's tokens (f by feature) and, for each, the
token's entries of g, adding into row a of out: that row stays in cache while a's tokens are
summed, which made it 3x faster than walking tokens first.
"""

from .cpu import SparseRows, gram_cpu, gram_is_sparse_enough, symmetrize_
from .naive import gram_reference

__all__ = ["SparseRows", "gram_cpu", "gram_is_sparse_enough", "gram_reference", "symmetrize_"]
