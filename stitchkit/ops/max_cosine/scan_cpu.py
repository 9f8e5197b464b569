"""The numba scans of the CPU screens (cpu.py, int8_cpu.py): per row of scores, the keys at or above
a threshold. Loaded through ops.numba_jit.load (compiled once, under a lock).

Scores are compared as int16 "order keys": the bf16 bits, with a negative value's magnitude bits
flipped, order as the values do. A positive threshold needs no flipping: every negative value's
raw bits are negative integers, below it; positive values order by their raw bits. So the common
case (a row whose max is positive, a cut above zero) runs on raw int16 compares, in blocks of 128
keys whose count at or above the cut (a vector reduction) is taken before any key in them is
looked at: 4.5x a compare-and-branch per key.
    max_scan(scores, slack, cap, out_idx, out_n)    threshold: the row's max - slack, rounded
                                                     down to bf16
    fixed_scan(scores, key, cap, out_idx, out_n)    threshold: one order key for every row
The int8 screen's int32 scores need no keys: int_cut_scan (a cut per row) and int_max_scan (the
row's max - a slack per row) run the same raw block compares (collect_raw, typed for both).
Each keeps, per row r, the first `cap` keys j (ascending) at or above its threshold in
out_idx[r] and their count in out_n[r] (which may exceed cap)."""

from __future__ import annotations

import numba
import numpy as np

from ..numba_jit import njit

BLOCK = 128


@njit("int64(int16)")
def order_key(x):
    x = np.int64(x)
    return x ^ 0x7FFF if x < 0 else x


@njit("int64(int16[::1])")
def max_key(row):
    """The row's largest order key."""
    best = np.int16(-32768)
    for j in range(len(row)):  # raw max first (vectorised): when positive, it is the max key too
        best = max(best, row[j])
    if best >= 0:
        return best
    top = np.int64(-32768)
    for j in range(len(row)):
        top = max(top, order_key(row[j]))
    return top


@njit("int64(int64, float64)")
def key_below(key, slack):
    """The order key of the largest bf16 at or below value(key) - slack."""
    bits = key ^ 0x7FFF if key < 0 else key  # back to raw int16 bits
    box = np.empty(1, np.uint32)
    box[0] = np.uint32((bits & 0xFFFF) << 16)
    t = np.float64(box.view(np.float32)[0]) - slack
    t32 = np.float32(t)
    if t32 > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    box.view(np.float32)[0] = t32
    hi = np.int64(box[0] >> 16)  # truncation: rounds towards zero
    if t32 < 0 and (box[0] & 0xFFFF) != 0:
        hi += 1  # a negative one rose towards zero: one bf16 step down (larger magnitude)
    if hi >= 32768:
        hi -= 65536
    k = hi ^ 0x7FFF if hi < 0 else hi
    return -1 if k == 0 else k  # +0 as a cut would drop -0 (whose key is -1)


# Raw compares of scores against a cut of their own type: int16 (bf16 order keys, a positive cut)
# or int32 (the int8 screen's products).
_RAW = [f"int64({t}[::1], int64, int64, {t}, int64, int64, int64[::1])" for t in ("int16", "int32")]


@njit(_RAW)
def _append(row, lo, hi, cut, c, cap, out):
    """The raw compares over row[lo:hi], c keys found so far; returns the new count."""
    for j in range(lo, hi):
        if row[j] >= cut:
            if c < cap:
                out[c] = j
            c += 1
    return c


@njit([f"int64({t}[::1], {t}, int64, int64[::1])" for t in ("int16", "int32")])
def collect_raw(row, cut, cap, out):
    """The first `cap` keys j (ascending) with row[j] >= cut into out; returns how many there are.
    Blocks of BLOCK keys are counted (a vector reduction) before any key in them is looked at."""
    c = 0
    full = len(row) // BLOCK * BLOCK
    for base in range(0, full, BLOCK):
        hits = 0
        for j in range(BLOCK):
            hits += row[base + j] >= cut
        if hits:
            c = _append(row, base, base + BLOCK, cut, c, cap, out)
    return _append(row, full, len(row), cut, c, cap, out)


@njit("int64(int16[::1], int64, int64, int64[::1])")
def collect(row, key, cap, out):
    if key > 0:  # raw compares (see the module doc)
        return collect_raw(row, np.int16(key), cap, out)
    c = 0
    for j in range(len(row)):
        if order_key(row[j]) >= key:
            if c < cap:
                out[c] = j
            c += 1
    return c


@njit("void(int16[:, ::1], float64, int64, int64[:, ::1], int64[::1])", parallel=True)
def max_scan(scores, slack, cap, out_idx, out_n):
    for r in numba.prange(scores.shape[0]):
        out_n[r] = collect(scores[r], key_below(max_key(scores[r]), slack), cap, out_idx[r])


@njit("void(int16[:, ::1], int64, int64, int64[:, ::1], int64[::1])", parallel=True)
def fixed_scan(scores, key, cap, out_idx, out_n):
    for r in numba.prange(scores.shape[0]):
        out_n[r] = collect(scores[r], key, cap, out_idx[r])


# -- int32 scores (the int8 screen, int8_cpu.py): per-row cuts, plain integer compares ----------


@njit("int32(int64)")
def _int32(x):
    return np.int32(min(max(x, -2147483648), 2147483647))


@njit("void(int32[:, ::1], int64[::1], int64, int64[:, ::1], int64[::1])", parallel=True)
def int_cut_scan(scores, cuts, cap, out_idx, out_n):
    """Per row r: the keys at or above cuts[r]."""
    for r in numba.prange(scores.shape[0]):
        out_n[r] = collect_raw(scores[r], _int32(cuts[r]), cap, out_idx[r])


@njit("void(int32[:, ::1], int64[::1], int64, int64[:, ::1], int64[::1])", parallel=True)
def int_max_scan(scores, slacks, cap, out_idx, out_n):
    """Per row r: the keys at or above the row's max - slacks[r]."""
    for r in numba.prange(scores.shape[0]):
        row = scores[r]
        best = row[0]
        for j in range(1, len(row)):
            best = max(best, row[j])
        out_n[r] = collect_raw(row, _int32(np.int64(best) - slacks[r]), cap, out_idx[r])
