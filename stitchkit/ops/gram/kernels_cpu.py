"""The numba kernels of ops.gram.cpu (CSR by token and by feature, float64 accumulation; the
by-feature form comes from ops.codes' by_feature). Loaded through ops.numba_jit.load: compiled
once per machine, under a lock."""

from __future__ import annotations

import numba
import numpy as np

from ..numba_jit import njit

CSR = "int64[::1], int64[::1], float32[::1]"  # row offsets, columns, values


@njit(f"void({CSR}, {CSR}, float64[:, :], boolean)", parallel=True)
def gram(crow_t, tok_t, val_t, crow, col, val, out, upper):
    """out[a, b] += sum over tokens of f[t, a] g[t, b] (b >= a only with `upper`)."""
    n_rows = len(crow_t) - 1
    for i in numba.prange(n_rows):
        # Rows taken from both ends in turn: the upper triangle's long rows (small a) and
        # short ones (large a) alternate, so each thread's share of the range is balanced.
        a = i // 2 if i % 2 == 0 else n_rows - 1 - i // 2
        row = out[a]
        for s in range(crow_t[a], crow_t[a + 1]):
            t = tok_t[s]
            va = np.float64(val_t[s])
            for r in range(crow[t], crow[t + 1]):
                b = col[r]
                if b >= a or not upper:
                    row[b] += va * val[r]


@njit(f"void({CSR}, float32[:, ::1], float64[:, :])", parallel=True)
def dense(crow_t, tok_t, val_t, x, out):
    """out[a] += sum over tokens of f[t, a] x[t]."""
    for a in numba.prange(len(crow_t) - 1):
        row = out[a]
        for s in range(crow_t[a], crow_t[a + 1]):
            xt = x[tok_t[s]]
            v = np.float64(val_t[s])
            for j in range(len(row)):
                row[j] += v * xt[j]
