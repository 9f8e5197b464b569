"""The numba kernels of the CPU encode screen (cpu.py). Loaded through ops.numba_jit.load.

screen(P, shift, wn, s, out_idx, out_n)
    per token row r of the bf16 pre-activation products P [rows, F] (int16 bits): the features
    j with P[r, j] + shift[j] + s[r] wn[j] >= 0, ascending, the first cap = out_idx.shape[1]
    in out_idx[r], their count in out_n[r] (which may exceed cap)
refine(x, WT, b, cut, idx, n, out_cols, out_vals, out_cnt)
    per token row r: each candidate j = idx[r, :n[r]]'s fp32 pre-activation, the exactly
    rounded float32 of x[r] . WT[j] + b[j] (products and sum in float64), kept where it is
    above cut[j]: the kept (j, value) pairs in out_cols[r], out_vals[r], their count in
    out_cnt[r]
compact(cols, vals, cnt, row_ids, starts, out_rows, out_cols, out_vals)
    those pairs, row by row, into flat arrays at each row's start (row r as row_ids[r])
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ..numba_jit import njit


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 of the integer `bits`: a bit cast, no conversion."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit("float32(int16)")
def bf16_value(x):
    return _f32_from_bits(np.int64(np.uint16(x)) << 16)


@njit("void(int16[:, ::1], float32[::1], float32[::1], float32[::1], int64[:, ::1], int64[::1])",
      parallel=True)  # fmt: skip
def screen(P, shift, wn, s, out_idx, out_n):
    F = P.shape[1]
    for r in numba.prange(P.shape[0]):
        row, sr, out = P[r], s[r], out_idx[r]
        # The test for every feature into a byte mask (a vector loop), then the mask read 8
        # features to a word: at the 1-2% of candidates an SAE leaves, most words are 0. (A
        # compare-and-branch per feature, or per block of them, took 2-4x as long.)
        mask = np.zeros((F + 7) // 8 * 8, np.uint8)
        for j in range(F):
            mask[j] = bf16_value(row[j]) + shift[j] + sr * wn[j] >= 0
        words, c = mask.view(np.uint64), 0
        for w in range(len(words)):
            if words[w]:
                for j in range(8 * w, 8 * w + 8):
                    if mask[j]:
                        if c < len(out):
                            out[c] = j
                        c += 1
        out_n[r] = c


@njit("float64(float32[::1], float32[::1])", fastmath=True)
def _dot64(a, b):
    acc = 0.0
    for i in range(len(a)):
        acc += np.float64(a[i]) * np.float64(b[i])
    return acc


@njit(
    "void(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], int64[:, ::1], int64[::1],"
    " int64[:, ::1], float32[:, ::1], int64[::1])",
    parallel=True,
)
def refine(x, WT, b, cut, idx, n, out_cols, out_vals, out_cnt):
    for r in numba.prange(x.shape[0]):
        k = 0
        for c in range(n[r]):
            j = idx[r, c]
            pre = np.float32(_dot64(x[r], WT[j]) + np.float64(b[j]))
            if pre > cut[j]:
                out_cols[r, k] = j
                out_vals[r, k] = pre
                k += 1
        out_cnt[r] = k


@njit("void(int64[:, ::1], float32[:, ::1], int64[::1], int64[::1], int64[::1],"
      " int64[::1], int64[::1], float32[::1])")  # fmt: skip
def compact(cols, vals, cnt, row_ids, starts, out_rows, out_cols, out_vals):
    for r in range(cols.shape[0]):
        at = starts[r]
        for c in range(cnt[r]):
            out_rows[at + c] = row_ids[r]
            out_cols[at + c] = cols[r, c]
            out_vals[at + c] = vals[r, c]
