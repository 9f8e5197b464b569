"""The Triton kernels of the fused encode (see stitchkit.ops.encode for what they compute):
`_encode_kernel` (relu / jumprelu / a per-token cut / the bf16 screen, with three slot compactions)
and `_encode_topk_kernel` (row-stationary TopK with packed (value, feature) keys)."""

from __future__ import annotations

from ..dispatch import triton_installed

if triton_installed():
    import triton
    import triton.language as tl

    from ..tiles import tile_dot_t

    @triton.jit
    def _encode_kernel(
        X, WT, B_ENC, TH, RC, IDX, VAL, COUNT, L1P, L0P, XN, WN,
        n, F, D, capacity, margin,
        stride_x, stride_w,
        HAS_TH: tl.constexpr,
        ROW_CUT: tl.constexpr,
        SCREEN: tl.constexpr,
        STATS: tl.constexpr,
        EMIT_CODES: tl.constexpr,
        COMPACT: tl.constexpr,
        PRECISION: tl.constexpr,
        W_KMAJOR: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):  # fmt: skip
        # Grouped tile order: GROUP_M token blocks sweep the features together, so their x rows
        # stay in L2 while W_enc^T streams past (a column-major walk re-read all of x per feature
        # block: 4x the time at d_sae = 98,304).
        pid = tl.program_id(0)
        n_m = tl.cdiv(n, BLOCK_M)
        n_n = tl.cdiv(F, BLOCK_N)
        group = pid // (GROUP_M * n_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
        pid_n = (pid % (GROUP_M * n_n)) // size_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rm < n
        col_ok = rn < F
        # WT: W_enc^T rows ([F, D], both operands K-major), or W_enc itself ([D, F]) when not
        # W_KMAJOR (see tiles.tile_dot_t).
        acc = tile_dot_t(
            X, WT, rm, rn, n, F, D, stride_x, stride_w, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, W_KMAJOR
        )
        b = tl.load(B_ENC + rn, mask=col_ok, other=0.0).to(tl.float32)
        pre = acc + b[None, :]
        if SCREEN:
            # Every feature whose exact pre-activation could pass: within the bf16 products'
            # bound (margin * (|x| |w_j| + |b_j|)) of the cut. Values are the caller's to redo.
            cut = 0.0
            if HAS_TH:
                cut = tl.maximum(tl.load(TH + rn, mask=col_ok, other=0.0).to(tl.float32), 0.0)[None, :]
            xn = tl.load(XN + rm, mask=row_ok, other=0.0)
            wn = tl.load(WN + rn, mask=col_ok, other=0.0)
            slack = margin * (xn[:, None] * wn[None, :] + tl.abs(b)[None, :])
            active = (pre > cut - slack) & row_ok[:, None] & col_ok[None, :]
            f = tl.where(active, pre, 0.0)
        else:
            f = tl.maximum(pre, 0.0)
            if HAS_TH:
                th = tl.load(TH + rn, mask=col_ok, other=0.0).to(tl.float32)
                f = tl.where(pre > th[None, :], f, 0.0)
            if ROW_CUT:  # a per-token cut: the TopK filter's candidates (encode_topk_filtered)
                rc = tl.load(RC + rm, mask=row_ok, other=0.0)
                f = tl.where(pre > rc[:, None], f, 0.0)
            active = (f > 0.0) & row_ok[:, None] & col_ok[None, :]
            f = tl.where(active, f, 0.0)
        hits = active.to(tl.int32)
        row_hits = tl.sum(hits, axis=1)
        if STATS:  # not for a screen, whose L1 and L0 come from the recomputed values
            out = pid_n * n + rm
            tl.store(L1P + out, tl.sum(f, axis=1), mask=row_ok)
            tl.store(L0P + out, row_hits.to(tl.float32), mask=row_ok)
        most = tl.max(row_hits, axis=0)  # hits of the tile's busiest row
        if EMIT_CODES and (COMPACT == "cumsum" or COMPACT == "peel") and most > 0:
            # One reservation per row with hits: at 0.05% density a 128 x 64 tile has about 4
            # hits, so most rows would add 0 (a rows-without-hits base is never used).
            # Relaxed: the slots need only atomicity (nothing reads them before the kernel ends),
            # and the default acq_rel ordering fences every atomic.
            base = tl.atomic_add(COUNT + rm, row_hits, mask=row_ok & (row_hits > 0), sem="relaxed")
            if COMPACT == "cumsum":  # a prefix sum over the row places each hit
                pos = base[:, None] + tl.cumsum(hits, axis=1) - 1
                ok = active & (pos < capacity)
                where = rm.to(tl.int64)[:, None] * capacity + pos
                tl.store(IDX + where, tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N]), mask=ok)
                tl.store(VAL + where, f, mask=ok)
            else:
                # "peel": per-row work only, as many rounds as the busiest row has hits, each
                # taking every row's largest remaining hit by one row max. The other two
                # compactions spend an atomic or a scan step, and a predicated store, on each of
                # the tile's BLOCK_M x BLOCK_N elements, almost all of them misses, and compiled
                # for sm_90 they run out of registers (bench/README.md, "Compiled without a GPU").
                left = tl.where(active, f, float("-inf"))  # a screen's candidates may be <= 0
                cols = tl.arange(0, BLOCK_N)
                for i in range(most):
                    v, j = tl.max(left, axis=1, return_indices=True)
                    ok = (i < row_hits) & (base + i < capacity)
                    where = rm.to(tl.int64) * capacity + base + i
                    tl.store(IDX + where, pid_n * BLOCK_N + j, mask=ok)
                    tl.store(VAL + where, v, mask=ok)
                    left = tl.where(cols[None, :] == j[:, None], float("-inf"), left)
        if EMIT_CODES and COMPACT == "atomic":
            # One atomic per hit (predicated off elsewhere): no cross-thread prefix sum.
            rows = tl.broadcast_to(rm[:, None], [BLOCK_M, BLOCK_N])
            pos = tl.atomic_add(COUNT + rows, hits, mask=active, sem="relaxed")
            ok = active & (pos < capacity)
            where = rows.to(tl.int64) * capacity + pos
            tl.store(IDX + where, tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N]), mask=ok)
            tl.store(VAL + where, f, mask=ok)

    @triton.jit
    def _pack(pre, feature):
        # Order-preserving int32 image of the fp32 bits (negative floats have their magnitude
        # bits flipped), above the complement of the feature index: sorting keys descending sorts
        # by value descending, then by feature ascending.
        bits = pre.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        return (ordered.to(tl.int64) << 32) | (4294967295 - feature.to(tl.int64))

    @triton.jit
    def _unpack(key):
        ordered = (key >> 32).to(tl.int32)
        bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
        feature = 4294967295 - (key & 4294967295)
        return bits.to(tl.float32, bitcast=True), feature.to(tl.int32)

    @triton.jit
    def _top_half(keys, BLOCK_M: tl.constexpr, R: tl.constexpr, MERGE: tl.constexpr):
        """The R largest of [BLOCK_M, 2R] keys per row, sorted descending."""
        if MERGE == "topk":  # bitonic top-k: sorts runs of R, then keeps the larger of each pair
            return tl.topk(keys, R)
        else:  # Triton without tl.topk: sort all 2R, keep the first R
            s = tl.reshape(tl.sort(keys, dim=1, descending=True), [BLOCK_M, 2, R])
            first, _ = tl.split(tl.permute(s, (0, 2, 1)))
            return first

    @triton.jit
    def _encode_topk_kernel(
        X, WT, B_ENC, IDX, VAL, L1, L0,
        n, F, D, k, stride_x, stride_w,
        PRECISION: tl.constexpr,
        MERGE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        R: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rm < n
        cols = tl.arange(0, R)
        # Start from R pairs (-inf, feature F + j) that any real feature outranks.
        best = _pack(tl.full([BLOCK_M, R], float("-inf"), tl.float32), F + cols[None, :] + 0 * rm[:, None])
        for start in range(0, F, R):
            rn = start + cols
            col_ok = rn < F
            acc = tile_dot_t(X, WT, rm, rn, n, F, D, stride_x, stride_w, BLOCK_M, R, BLOCK_K, PRECISION, True)
            pre = acc + tl.load(B_ENC + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            pre = tl.where(col_ok[None, :], pre, float("-inf"))
            keys = _pack(pre, rn[None, :] + 0 * rm[:, None])
            # A tile that beats no token's current R-th best key would change nothing.
            beats = (tl.max(keys, axis=1) > tl.min(best, axis=1)) & row_ok
            if tl.max(beats.to(tl.int32), axis=0) > 0:
                best = _top_half(tl.reshape(tl.join(best, keys), [BLOCK_M, 2 * R]), BLOCK_M, R, MERGE)
        val, feature = _unpack(best)
        active = (cols[None, :] < k) & (val > 0.0) & row_ok[:, None]
        val = tl.where(active, val, 0.0)
        where = rm.to(tl.int64)[:, None] * k + cols[None, :]
        store = (cols[None, :] < k) & row_ok[:, None]
        tl.store(IDX + where, tl.where(active, feature, -1), mask=store)
        tl.store(VAL + where, val, mask=store)
        tl.store(L1 + rm, tl.sum(val, axis=1), mask=row_ok)
        tl.store(L0 + rm, tl.sum(active.to(tl.float32), axis=1), mask=row_ok)
