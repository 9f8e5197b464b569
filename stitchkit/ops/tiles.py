"""The tile product shared by the GEMM-shaped kernels (max_cosine, sae_forward), the name of the
tl.dot arithmetic for a requested precision on a device, and the error bound of bf16 products
that both kernels' bf16 screens rely on.

    tile_dot_t(A [M, K], B [N, K], rm, rn, ...) -> the fp32 [BLOCK_M, BLOCK_N] tile of A B^T for
        rows rm of A and rows rn of B. Both operands are read K-major (rows of length K): tf32
        tensor-core products on Hopper need that, and an N-major B tile ran at a third of the rate.
        With B_KMAJOR=False, B is [K, N] (B^T of the above; columns rn) and is read N-major: for
        16-bit inputs Hopper's tensor cores take that as it is (compiled for sm_90, the loop has
        the K-major one's instruction mix), which spares a transposed copy of B.
"""

from __future__ import annotations

from .dispatch import triton_installed


def dot_precision(precision: str, on_gpu: bool) -> str:
    """tl.dot's input precision for "fp32" / "tf32" / "bf16" inputs. fp32 on a GPU runs as tf32x3
    (three tf32 tensor-core products, about fp32's error); in the interpreter as IEEE fp32."""
    if on_gpu:
        return {"fp32": "tf32x3", "tf32": "tf32", "bf16": "bf16"}[precision]
    return {"fp32": "ieee", "tf32": "tf32", "bf16": "bf16-interpret"}[precision]


def bf16_margin(d: int) -> float:
    """How far a bf16-product, fp32-accumulated inner product of two unit rows of length d can
    be from the exact one (for rows of other norms: times |q| |k|). bf16 rounding (2^-8 relative
    per input) moves each product by at most (2^-7 + 2^-16) |q_i k_i|, so the sum by at most
    (2^-7 + 2^-16) sum|q_i k_i| <= (2^-7 + 2^-16) |q| |k| (Cauchy-Schwarz); fp32 accumulation adds
    at most d * 2^-24 relative. Both terms rounded up."""
    return 2**-7 + 2**-15 + d * 2**-23


if triton_installed():
    import triton
    import triton.language as tl

    @triton.jit
    def tile_dot_t(
        A, B, rm, rn, M, N, K, stride_a, stride_b,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
        B_KMAJOR: tl.constexpr,
    ):  # fmt: skip
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        a_rows = A + rm.to(tl.int64)[:, None] * stride_a
        if B_KMAJOR:
            b_rows = B + rn.to(tl.int64)[:, None] * stride_b  # [BLOCK_N, 1]
        else:
            b_cols = B + rn[None, :]  # [1, BLOCK_N]
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_rows + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            if B_KMAJOR:  # [BLOCK_N, BLOCK_K] rows of B, transposed in registers
                b = tl.load(b_rows + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)
                b = tl.trans(b)
            else:  # [BLOCK_K, BLOCK_N]: BLOCK_K rows of B^T
                b = tl.load(
                    b_cols + rk.to(tl.int64)[:, None] * stride_b,
                    mask=(rk[:, None] < K) & (rn[None, :] < N),
                    other=0.0,
                )
            if PRECISION == "bf16-interpret":
                # The Triton 3.9 interpreter computes bf16 tl.dot wrongly; bf16 products are
                # exact in fp32, so an fp32 dot of the same values is the same function.
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            elif PRECISION == "bf16":
                acc = tl.dot(a, b, acc)
            else:
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
        return acc
