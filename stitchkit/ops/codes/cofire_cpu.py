"""The numba kernels of the sparse co-firing forms (stitch.sparse_form): exact greedy descent on
a quadratic form G_kl = A_kl (v_k . v_l) / n whose A = c^T c is never formed. Loaded through
ops.numba_jit.load.

The codes c [n, K] are given twice: token-major (crow [n + 1], cols, vals) and feature-major
(fcrow [K + 1], tok, fvals). Column j of A is gathered from the tokens where feature j fires:
A_kj = sum over those tokens t of c_tj c_tk, so a column costs (tokens j fires on) x L0.

greedy(...) -> picks
    Moves are groups of elements (mstart [M + 1], melem, msign: each element's sign s_k); every
    element belongs to one move (elem_move [K], -1 for a column of no move; elem_sign [K]).
    gain [M] holds each move's current change of the objective. Repeatedly take the free move
    with the least gain (the first on ties, as torch.argmin) while it is < 0, or the next of
    `forced` when forced is non-empty (then to its end, whatever the gain); record it and its
    gain; for each of its elements j, add 2 s_k s_j A_kj (v_k . v_j) / n to the gain of the
    move of every element k that co-fires with j. Float64 throughout.
move_quads(...)
    quad[m] = s^T G[m, m] s over each move's own elements.
"""

from __future__ import annotations

import numpy as np

from ..numba_jit import njit

_I = "int64[::1]"
_F = "float64[::1]"


@njit(f"int64({_I}, {_I}, {_F}, {_I}, {_I}, {_F}, float64[:, ::1], float64, {_I}, {_I}, {_F}, {_I}, {_F}, "
      f"{_F}, {_I}, {_I}, {_F})")  # fmt: skip
def greedy(crow, cols, vals, fcrow, tok, fvals, V, inv_n, mstart, melem, msign, elem_move, elem_sign,
           gain, forced, picks, picked_gain):  # fmt: skip
    K, M, d = len(fcrow) - 1, len(mstart) - 1, V.shape[1]
    acc = np.zeros(K, np.float64)
    seen = np.zeros(K, np.bool_)
    touched = np.empty(K, np.int64)
    free = np.ones(M, np.bool_)
    count = 0
    while count < M:
        best = -1
        if len(forced):
            if count == len(forced):
                break
            best = forced[count]
        else:
            low = 0.0
            for m in range(M):
                if free[m] and gain[m] < low:
                    low, best = gain[m], m
            if best < 0:
                break
        free[best] = False
        picks[count] = best
        picked_gain[count] = gain[best]
        count += 1
        for e in range(mstart[best], mstart[best + 1]):
            j, sj = melem[e], msign[e]
            nt = 0
            for p in range(fcrow[j], fcrow[j + 1]):
                t, a = tok[p], fvals[p]
                for q in range(crow[t], crow[t + 1]):
                    k = cols[q]
                    if elem_move[k] < 0:
                        continue
                    if not seen[k]:
                        seen[k] = True
                        touched[nt] = k
                        nt += 1
                    acc[k] += a * vals[q]
            for i in range(nt):
                k = touched[i]
                dot = 0.0
                for c in range(d):
                    dot += V[k, c] * V[j, c]
                gain[elem_move[k]] += 2.0 * elem_sign[k] * sj * acc[k] * dot * inv_n
                acc[k] = 0.0
                seen[k] = False
    return count


@njit(f"void({_I}, {_I}, {_F}, {_I}, {_I}, {_F}, float64[:, ::1], float64, {_I}, {_I}, {_F}, {_I}, {_F})")
def move_quads(crow, cols, vals, fcrow, tok, fvals, V, inv_n, mstart, melem, msign, elem_move, quad):
    K, M, d = len(fcrow) - 1, len(mstart) - 1, V.shape[1]
    acc = np.zeros(K, np.float64)
    sign = np.zeros(K, np.float64)
    for m in range(M):
        for e in range(mstart[m], mstart[m + 1]):
            sign[melem[e]] = msign[e]
        total = 0.0
        for e in range(mstart[m], mstart[m + 1]):
            j = melem[e]
            for p in range(fcrow[j], fcrow[j + 1]):
                t, a = tok[p], fvals[p]
                for q in range(crow[t], crow[t + 1]):
                    k = cols[q]
                    if elem_move[k] == m:
                        acc[k] += a * vals[q]
            for e2 in range(mstart[m], mstart[m + 1]):
                k = melem[e2]
                if acc[k] != 0.0:
                    dot = 0.0
                    for c in range(d):
                        dot += V[k, c] * V[j, c]
                    total += sign[k] * msign[e] * acc[k] * dot * inv_n
                    acc[k] = 0.0
        quad[m] = total
