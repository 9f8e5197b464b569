"""Triton kernels of max_ip and pairs_above, the bf16-screened exact max, and their launch
configurations (see stitchkit.ops.max_cosine)."""

from __future__ import annotations

import torch

from ..dispatch import triton_installed, triton_interpreting
from ..tiles import bf16_margin, dot_precision
from . import PRECISIONS

if triton_installed():
    import triton
    import triton.language as tl

    from ..tiles import tile_dot_t

    @triton.jit
    def _max_ip_kernel(
        Q,
        K,
        VAL,
        IDX,
        Fq,
        Fk,
        D,
        stride_q,
        stride_k,
        keys_per_split,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        n_start = pid_s * keys_per_split
        n_end = tl.minimum(n_start + keys_per_split, Fk)
        best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        best_i = tl.full([BLOCK_M], 0, dtype=tl.int32)
        for n0 in range(n_start, n_end, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            acc = tile_dot_t(
                Q, K, rm, rn, Fq, n_end, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, True
            )
            acc = tl.where(rn[None, :] < n_end, acc, float("-inf"))
            tile_max = tl.max(acc, axis=1)
            tile_arg = tl.argmax(acc, axis=1, tie_break_left=True)
            better = tile_max > best  # strict: an earlier tile keeps ties
            best = tl.where(better, tile_max, best)
            best_i = tl.where(better, n0 + tile_arg, best_i)
        out = pid_s * Fq + rm
        tl.store(VAL + out, best, mask=rm < Fq)
        tl.store(IDX + out, best_i, mask=rm < Fq)

    @triton.jit
    def _pairs_kernel(
        Q,
        K,
        OUT_I,
        OUT_J,
        OUT_V,
        COUNTER,
        capacity,
        TH,
        Fq,
        Fk,
        D,
        stride_q,
        stride_k,
        keys_per_split,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_s = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        n_start = pid_s * keys_per_split
        n_end = tl.minimum(n_start + keys_per_split, Fk)
        th = tl.load(TH + rm, mask=rm < Fq, other=float("inf"))[:, None]
        for n0 in range(n_start, n_end, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            acc = tile_dot_t(
                Q, K, rm, rn, Fq, n_end, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, True
            )
            acc = tl.where((rm[:, None] < Fq) & (rn[None, :] < n_end), acc, float("-inf"))
            # Most tiles hold no pair: a max reduction is far cheaper than the compaction.
            # (a - b > 0 exactly when a > b for finite floats.)
            if tl.max(tl.max(acc - th, axis=1), axis=0) > 0:
                flat = tl.reshape((acc > th).to(tl.int32), [BLOCK_M * BLOCK_N])
                base = tl.atomic_add(COUNTER, tl.sum(flat, axis=0), sem="relaxed")  # atomicity only
                pos = base + tl.cumsum(flat, axis=0) - 1
                ok = (flat != 0) & (pos < capacity)
                ii = tl.reshape(tl.broadcast_to(rm[:, None], [BLOCK_M, BLOCK_N]), [BLOCK_M * BLOCK_N])
                jj = tl.reshape(tl.broadcast_to(rn[None, :], [BLOCK_M, BLOCK_N]), [BLOCK_M * BLOCK_N])
                tl.store(OUT_I + pos, ii, mask=ok)
                tl.store(OUT_J + pos, jj, mask=ok)
                tl.store(OUT_V + pos, tl.reshape(acc, [BLOCK_M * BLOCK_N]), mask=ok)


# Launch configurations (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), chosen by the sweep in
# bench/gpu_similarity.py on an H100 (bench/results/); the interpreter uses small blocks.
_CONFIGS = {
    ("max", "fp32"): (128, 128, 32, 8, 3),  # tf32x3: three dots need the smaller tile
    ("max", "tf32"): (128, 256, 32, 8, 3),
    ("max", "bf16"): (128, 256, 64, 8, 3),
    ("pairs", "fp32"): (128, 128, 32, 8, 3),  # pair tiles: the compaction costs registers
    ("pairs", "tf32"): (128, 128, 32, 8, 3),
    ("pairs", "bf16"): (128, 128, 64, 8, 3),
}


def _blocks(qn: torch.Tensor, precision: str, kind: str) -> dict:
    if triton_interpreting() and not qn.is_cuda:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    m, n, k, w, s = _CONFIGS[(kind, precision)]
    return dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=s)


def _split_keys(q: torch.Tensor, Fq: int, Fk: int, cfg: dict, n_split: int | None) -> tuple[int, int, int]:
    """(query blocks, key splits, keys per split): enough programs to fill the GPU a few times
    over even when Fq is small; each program walks its keys with its query rows held."""
    m_blocks = triton.cdiv(Fq, cfg["BLOCK_M"])
    n_blocks = triton.cdiv(Fk, cfg["BLOCK_N"])
    if n_split is None:
        n_sm = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 1
        n_split = max(1, min(n_blocks, -(-4 * n_sm // m_blocks)))
    keys_per_split = triton.cdiv(n_blocks, n_split) * cfg["BLOCK_N"]
    return m_blocks, triton.cdiv(Fk, keys_per_split), keys_per_split


def _prepare(qn: torch.Tensor, kn: torch.Tensor, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # The caller recomputes the winning cosine exactly in fp32.
    tl_precision = dot_precision(precision, qn.is_cuda)
    return qn.to(dtype).contiguous(), kn.to(dtype).contiguous(), tl_precision


def max_ip_triton(
    qn: torch.Tensor,
    kn: torch.Tensor,
    precision: str = "fp32",
    n_split: int | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton max_ip (see module doc). qn, kn on the same device (CUDA, or CPU when interpreting).
    config overrides the launch parameters (BLOCK_M/N/K, num_warps, num_stages), for tuning."""
    q, k, tl_precision = _prepare(qn, kn, precision)
    Fq, D = q.shape
    Fk = k.shape[0]
    cfg = config or _blocks(q, precision, "max")
    m_blocks, n_split, keys_per_split = _split_keys(q, Fq, Fk, cfg, n_split)
    val = torch.empty(n_split, Fq, dtype=torch.float32, device=q.device)
    idx = torch.empty(n_split, Fq, dtype=torch.int32, device=q.device)
    _max_ip_kernel[(m_blocks, n_split)](
        q,
        k,
        val,
        idx,
        Fq,
        Fk,
        D,
        q.stride(0),
        k.stride(0),
        keys_per_split,
        PRECISION=tl_precision,
        **cfg,
    )
    if n_split == 1:
        return val[0], idx[0].long()
    best, split = val.max(dim=0)  # first split among equals: the smallest key index wins
    return best, idx.gather(0, split[None]).squeeze(0).long()


def pairs_above_triton(
    qn: torch.Tensor,
    kn: torch.Tensor,
    threshold: float | torch.Tensor,
    precision: str = "fp32",
    capacity: int | None = None,
    config: dict | None = None,
    n_split: int | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Triton pairs_above (see module doc). Grows its output buffer and retries on overflow;
    returns None instead when there are more than `limit` pairs."""
    q, k, tl_precision = _prepare(qn, kn, precision)
    Fq, D = q.shape
    Fk = k.shape[0]
    cfg = config or _blocks(q, precision, "pairs")
    m_blocks, n_split, keys_per_split = _split_keys(q, Fq, Fk, cfg, n_split)
    capacity = capacity if capacity is not None else max(1024, 4 * Fq)
    if limit is not None:
        capacity = min(capacity, max(limit, 1))
    th = torch.as_tensor(threshold, dtype=torch.float32, device=q.device).expand(Fq).contiguous()
    counter = torch.zeros(1, dtype=torch.int32, device=q.device)
    while True:
        out_i = torch.empty(capacity, dtype=torch.int32, device=q.device)
        out_j = torch.empty(capacity, dtype=torch.int32, device=q.device)
        out_v = torch.empty(capacity, dtype=torch.float32, device=q.device)
        counter.zero_()
        _pairs_kernel[(m_blocks, n_split)](
            q, k, out_i, out_j, out_v, counter, capacity, th,
            Fq, Fk, D, q.stride(0), k.stride(0), keys_per_split,
            PRECISION=tl_precision, **cfg,
        )  # fmt: skip
        found = int(counter.item())
        if found <= capacity:
            return out_i[:found].long(), out_j[:found].long(), out_v[:found]
        if limit is not None and found > limit:
            return None
        capacity = found


def screen_slack(d: int) -> float:
    """How far below a row's best bf16 score max_ip_screened_triton still takes candidates."""
    return 2 * bf16_margin(d) + 2 * d * 2**-23


def max_ip_screened_triton(
    qn: torch.Tensor, kn: torch.Tensor, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """max_ip in fp32 from a bf16 screen (see module doc): the key with the largest fp32 row
    product qn[i] . kn[j] (summed in fp32 by torch), the smallest index among equal ones.

    With m = bf16_margin(d) and g = d * 2^-23 (fp32 row-product error), the best bf16 score b_i
    is at most the exact max s_i + m, and the fp32 winner's exact product is at least s_i - 2g,
    so its bf16 score is at least b_i - 2m - 2g: every key above that is a candidate. Rows whose
    top keys are nearly equal (duplicated keys, tiny d) can have many; past `limit` pairs in all
    (default max(4096, 32 Fq)) the tf32x3 kernel (max_ip_triton "fp32") answers instead, as it
    does for a row with no candidate at all (NaN in the row)."""
    Fq, d = qn.shape
    best, _ = max_ip_triton(qn, kn, "bf16")
    slack = screen_slack(d)
    limit = limit if limit is not None else max(4096, 32 * Fq)
    # Room for `limit` pairs from the start (12 bytes each: 38 MB at Fq = 98,304): an overflow
    # would re-run the whole pair kernel, and the count depends on how alike the keys are.
    pairs = pairs_above_triton(qn, kn, best - slack, "bf16", capacity=limit, limit=limit)
    if pairs is None:
        return max_ip_triton(qn, kn, "fp32")
    i, j, _ = pairs
    ip = (qn[i] * kn[j]).sum(dim=1)
    values = torch.full((Fq,), float("-inf"), dtype=torch.float32, device=qn.device)
    values.scatter_reduce_(0, i, ip, "amax")
    at_max = ip == values[i]
    indices = torch.full((Fq,), kn.shape[0], dtype=torch.int64, device=qn.device)
    indices.scatter_reduce_(0, i[at_max], j[at_max], "amin")
    lost = indices == kn.shape[0]  # no candidate: only a row with NaN in it (the caller's to mask)
    if lost.any():
        values[lost], indices[lost] = max_ip_triton(qn[lost], kn, "fp32")
    return values, indices
