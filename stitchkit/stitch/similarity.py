"""Decoder similarity between SAEs: max cosine, parent links and the novel-feature sweep.

Backends:
- "torch":  chunked matmul, the reference; any device; memory O((Fq + Fk) d + chunk * Fk).
- "faiss":  exact inner-product search on unit rows (faiss.knn / IndexFlatIP), CPU, or GPU when
            the installed FAISS has GPU support. FAISS has no GPU range search, so parent links
            asked of "faiss" on CUDA tensors run on the torch backend (with a warning).
- "triton": fused kernels that never write the Fq x Fk matrix (stitchkit.ops.max_cosine).
- "cpu":    a screen in reduced precision, fp32 deciding among the candidates within its proven
            error: bf16 products on the CPU's bf16 matrix/vector units (ops.max_cosine.cpu) or
            int8 products (VNNI; ops.max_cosine.int8_cpu), whichever ops.dispatch.
            similarity_screen's table names for this CPU: the fp32 answer at about their cost.
- "auto":   triton on CUDA tensors (FAISS-GPU when Triton is missing, else torch); on CPU tensors
            "cpu" where the table names a screen for the search, else FAISS when installed, else
            torch.
No backend materialises the full Fq x Fk cosine matrix.

Across ranks (stitchkit.dist) the search is a grid of query groups by key shards. The query rows
are split into contiguous shards whose boundaries fall on the search's own chunk boundaries; the
key rows are split into `key_shards` contiguous shards only when one rank's copies of all keys
would take more than half its free memory (ops.dispatch.key_shards; STITCHKIT_KEY_SHARDS forces a
count). Each rank searches its cell, and the cells are gathered on every rank:
- max cosine: each cell's best key is valued by its fp32 row product, and the key shards' bests
  merge by that value, the smallest key index among equal ones. That is the one-process answer bit
  for bit wherever the backend decides by fp32 row products (the "cpu" and Triton fp32 screens); a
  backend that picks by its GEMM's values ("torch", "faiss") can, with key shards, choose the other
  key of a near-tie within fp32's error (without key shards it gives its one-process answer).
- parent links: each cell's pairs, with their fp32 row products, gathered and sorted: identical.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from .. import dist
from ..errors import InvalidArgumentError, ShapeError
from ..ops.dispatch import SIMILARITY_BACKENDS as BACKENDS
from ..ops.dispatch import faiss_has_gpu, similarity_backend, similarity_screen
from ..ops.max_cosine import PRECISIONS, Links, MaxCosine
from ..sae.model import SAE
from .rules import DEFAULT_THRESHOLD, SWEEP_THRESHOLDS, check_threshold, is_novel, is_parent_link

__all__ = [
    "BACKENDS", "Links", "MaxCosine", "Nearest", "max_cosine", "nearest_features", "novel_fraction_sweep",
    "parent_links",
]  # fmt: skip


def _decoder(x: SAE | torch.Tensor, what: str) -> tuple[torch.Tensor, str]:
    if isinstance(x, SAE):
        return x.W_dec.detach(), f"SAE {x.name!r} (W_dec)"
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{what}: expected an SAE or a tensor [F, d], got {type(x).__name__}")
    if x.dim() != 2:
        raise ShapeError(f"{what}: expected a decoder matrix [F, d], got shape {tuple(x.shape)}")
    return x.detach(), what


def _norms(w: torch.Tensor, label: str, on_zero: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row norms in float64 (without a float64 copy of the matrix: at 98,304 x 768 that copy alone
    is 0.6 GB) and a bool mask of zero-norm rows; NaN/Inf rows raise, and zero rows with "raise"."""
    norms = torch.linalg.vector_norm(w, dim=1, dtype=torch.float64)
    if not torch.isfinite(norms).all():
        bad = (~torch.isfinite(norms)).nonzero().flatten()[:10].tolist()
        raise InvalidArgumentError(f"{label}: rows {bad} hold NaN/Inf, expected finite rows")
    zero = norms == 0
    if zero.any() and on_zero == "raise":
        rows = zero.nonzero().flatten()
        raise InvalidArgumentError(
            f"{label}: {len(rows)} rows have zero norm (rows {rows[:10].tolist()}"
            f"{', ...' if len(rows) > 10 else ''}); their cosine is undefined. Pass on_zero='nan' "
            "to get NaN and index -1 for them"
        )
    return norms, zero


def _unit(w: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Unit rows in fp32 (a zero row stays zero)."""
    return w.float() / norms.clamp_min(1e-300).float()[:, None]


def _check_pair(query, key, on_zero: str):
    """(q, q_norms, q_zero, k, k_norms, k_zero): the raw decoders, checked, and their norms."""
    if on_zero not in ("raise", "nan"):
        raise InvalidArgumentError(f"on_zero must be 'raise' or 'nan', got {on_zero!r}")
    q, q_label = _decoder(query, "query")
    k, k_label = _decoder(key, "key")
    if q.shape[1] != k.shape[1]:
        raise ShapeError(
            f"{q_label} has rows of width {q.shape[1]}, {k_label} has rows of width {k.shape[1]}; "
            "expected the same d_in"
        )
    if q.device != k.device:
        raise InvalidArgumentError(
            f"{q_label} is on {q.device}, {k_label} on {k.device}; expected one device"
        )
    if k.shape[0] == 0:
        raise ShapeError(f"{k_label} has no rows; expected at least one key row")
    return (q, *_norms(q, q_label, on_zero), k, *_norms(k, k_label, on_zero))


def _query_chunk(chosen: str, n_keys: int, device: torch.device) -> int:
    """Query rows per chunk of the search (the shard alignment across ranks): the torch reference's
    own chunk, or 4,096 (FAISS's query block; a multiple of every Triton row tile)."""
    from ..ops.dispatch import rows_per_chunk

    return rows_per_chunk(4 * n_keys, device) if chosen == "torch" else 4096  # "cpu" chunks are <= 1024


class _Grid(NamedTuple):
    """This rank's part of a search: query rows [q_lo, q_hi) against key rows [k_lo, k_hi). Ranks
    form a grid of world / key_shards query groups by key_shards key shards (rank r: query group
    r // key_shards, key shard r % key_shards). step: the query-shard alignment (the search's own
    chunk), None alone."""

    step: int | None
    q_lo: int
    q_hi: int
    k_lo: int
    k_hi: int
    key_shards: int

    def query_sizes(self, n_q: int) -> list[int]:
        """Rows of every rank's query part, in rank order."""
        groups = dist.world() // self.key_shards
        cuts = [dist.split(n_q, groups, r // self.key_shards, self.step) for r in range(dist.world())]
        return [hi - lo for lo, hi in cuts]


def _grid(chosen: str, n_q: int, n_k: int, d: int, device: torch.device) -> _Grid:
    """Split a search across ranks (see the module doc): rank 0 picks the key shards (by memory,
    ops.dispatch.key_shards) and the query alignment, and every rank takes its cell."""
    from ..ops.dispatch import key_shards

    w = dist.world()
    if w == 1:
        grid = _Grid(None, 0, n_q, 0, n_k, 1)
    else:
        # The search holds fp32 and bf16 copies of its keys: 6 bytes per element. Every rank asks
        # (so a bad STITCHKIT_KEY_SHARDS fails on all of them); rank 0's answer by memory holds.
        pk = dist.broadcast(key_shards(6 * n_k * d, device, w))
        step = dist.broadcast(_query_chunk(chosen, -(-n_k // pk), device) if dist.is_main() else None)
        group, part = divmod(dist.rank(), pk)
        grid = _Grid(step, *dist.split(n_q, w // pk, group, step), *dist.split(n_k, pk, part), pk)
    dist.count("query_rows", grid.q_hi - grid.q_lo)
    dist.count("key_rows", grid.k_hi - grid.k_lo)
    return grid


def _cell(grid: _Grid, q, q_norms, k, k_norms, device: torch.device):
    """Unit rows of this rank's query and key rows only, on `device` (a rank's memory is its
    cell's)."""
    qn = _unit(q[grid.q_lo : grid.q_hi].to(device), q_norms[grid.q_lo : grid.q_hi].to(device))
    kn = _unit(k[grid.k_lo : grid.k_hi].to(device), k_norms[grid.k_lo : grid.k_hi].to(device))
    return qn, kn


def _merge_max(grid: _Grid, n_q: int, values: torch.Tensor, indices: torch.Tensor):
    """Every rank's best key per query row of its part -> the best over the key shards, the
    smallest key index among equal values (max_ip's tie rule), for all n_q rows, on every rank."""
    if grid.step is None:
        return values, indices
    sizes = grid.query_sizes(n_q)
    vals, idx = dist.gather_cat(values).split(sizes), dist.gather_cat(indices).split(sizes)
    pk = grid.key_shards
    out_v, out_i = [], []
    for g in range(0, len(sizes), pk):  # one query group: its key shards in ascending key order
        v, i = torch.stack(vals[g : g + pk]), torch.stack(idx[g : g + pk])
        first = (v == v.max(dim=0).values).int().argmax(dim=0)  # the first shard at the max
        out_v.append(v.gather(0, first[None]).squeeze(0))
        out_i.append(i.gather(0, first[None]).squeeze(0))
    return torch.cat(out_v), torch.cat(out_i)


def _cpu_screen(op: str, d: int) -> str:
    """The screen backend "cpu" runs for rows of length d: the dispatch table's (or, asked for by
    name where the table names none, whichever runs), bf16 where int8 sums could overflow."""
    from ..ops.max_cosine.int8_cpu import int8_screen_available

    screen = similarity_screen(op, required=True)
    return "bf16" if screen == "int8" and not int8_screen_available(d) else screen


def _max_ip_faiss(qn: torch.Tensor, kn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    if qn.is_cuda:
        if not faiss_has_gpu():
            raise InvalidArgumentError("backend='faiss' on CUDA tensors needs a GPU build of FAISS")
        import faiss.contrib.torch_utils  # noqa: F401  (lets torch CUDA tensors in, no copies)

        res = faiss.StandardGpuResources()
        D, I = faiss.knn_gpu(res, qn, kn, 1, metric=faiss.METRIC_INNER_PRODUCT)
        return D[:, 0].float(), I[:, 0].long()
    D, I = faiss.knn(qn.numpy(), kn.numpy(), 1, metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(D[:, 0]).float(), torch.from_numpy(I[:, 0]).long()


def _pairs_faiss(qn: torch.Tensor, kn: torch.Tensor, threshold: float):
    import faiss

    index = faiss.IndexFlatIP(kn.shape[1])
    index.add(kn.numpy())
    lims, D, I = index.range_search(qn.numpy(), float(threshold))  # keeps ip > threshold
    counts = torch.from_numpy(lims[1:] - lims[:-1]).long()
    child = torch.repeat_interleave(torch.arange(qn.shape[0]), counts)
    return child, torch.from_numpy(I).long(), torch.from_numpy(D).float()


def max_cosine(
    query: SAE | torch.Tensor,
    key: SAE | torch.Tensor,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    on_zero: str = "raise",
    device: torch.device | str | None = None,
) -> MaxCosine:
    """Max cosine similarity of each query decoder row against all key decoder rows.

    query: SAE or tensor [Fq, d]; key: SAE or tensor [Fk, d] (same d, same device). Rows are
    normalised inside (norms in float64). Returns MaxCosine(values fp32 [Fq], indices int64 [Fq]).
    precision: "fp32", "tf32" or "bf16" products with fp32 accumulation; with tf32/bf16 the
    winning cosine is recomputed in fp32, so only the choice among near-ties (within the
    precision's error) can differ from fp32. fp32 on Triton screens with bf16 and compares the
    keys within bf16's proven error of each row's best in fp32 (exact fp32 winner, bf16 cost).
    on_zero="nan" gives zero-norm query rows NaN and index -1, and ignores zero-norm key rows;
    "raise" (default) raises for either. device: where the search runs and the result lands
    (default: the inputs' device); only this rank's rows are copied there, so decoders held in
    host memory can be searched on a GPU that could not hold them (with key shards across ranks).
    """
    from ..ops.max_cosine.naive import max_ip_reference
    from ..ops.max_cosine.triton import max_ip_screened_triton, max_ip_triton

    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    q, q_norms, q_zero, k, k_norms, k_zero = _check_pair(query, key, on_zero)
    dev = torch.device(device) if device is not None else q.device
    keep = None
    if k_zero.any():
        keep = (~k_zero).nonzero().flatten()
        k, k_norms = k[keep], k_norms[keep]
        if len(keep) == 0:
            nan = torch.full((q.shape[0],), float("nan"), device=dev)
            return MaxCosine(nan, torch.full_like(nan, -1, dtype=torch.int64))
    if q.shape[0] == 0:
        return MaxCosine(torch.empty(0, device=dev), torch.empty(0, dtype=torch.int64, device=dev))
    chosen = similarity_backend(backend, dev, "max")
    grid = _grid(chosen, q.shape[0], k.shape[0], q.shape[1], dev)
    qn, kn = _cell(grid, q, q_norms, k, k_norms, dev)
    screen = _cpu_screen("max", q.shape[1]) if chosen == "cpu" else None

    def search(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if q.shape[0] == 0 or kn.shape[0] == 0:
            return torch.empty(0, device=q.device), torch.empty(0, dtype=torch.int64, device=q.device)
        if chosen == "triton" and precision == "fp32":  # a bf16 screen, then fp32 on the candidates
            return max_ip_screened_triton(q, kn)
        if chosen == "triton":
            return max_ip_triton(q, kn, precision)
        if chosen == "faiss":
            return _max_ip_faiss(q, kn)
        if chosen == "cpu" and precision == "bf16":
            from ..ops.max_cosine.cpu import max_ip_bf16_cpu

            return max_ip_bf16_cpu(q, kn)
        if chosen == "cpu" and screen == "int8":
            from ..ops.max_cosine.int8_cpu import max_ip_int8_cpu

            return max_ip_int8_cpu(q, kn)
        if chosen == "cpu":
            from ..ops.max_cosine.cpu import max_ip_screened_cpu

            return max_ip_screened_cpu(q, kn)
        return max_ip_reference(q, kn, precision, chunk_rows=grid.step)

    if kn.shape[0] == 0:  # more key shards than keys: this shard offers nothing
        values = torch.full((qn.shape[0],), float("-inf"), device=dev)
        indices = torch.full((qn.shape[0],), k.shape[0], dtype=torch.int64, device=dev)
    else:
        _, indices = search(qn)
        # The fp32 cosine of the chosen pair, whatever the search's arithmetic (tf32x3/tf32/bf16
        # products in Triton, BLAS blocking in FAISS): one row product per query, O(Fq d). It is
        # also what key shards compare, so their merge is the one-process answer.
        values = (qn * kn[indices]).sum(dim=1)
        indices = indices + grid.k_lo
    values, indices = _merge_max(grid, q.shape[0], values, indices)
    if keep is not None:
        indices = keep.to(dev)[indices]
    q_zero = q_zero.to(dev)
    if q_zero.any():
        values = values.masked_fill(q_zero, float("nan"))
        indices = indices.masked_fill(q_zero, -1)
    return MaxCosine(values, indices)


def parent_links(
    large: SAE | torch.Tensor,
    small: SAE | torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: torch.device | str | None = None,
) -> Links:
    """Every (child in large, parent in small) decoder pair with cosine > threshold.

    Returns Links(child, parent, cos) sorted by child, then by decreasing cosine (ties by
    parent index). threshold must lie in (-1, 1). Zero-norm rows raise. Every returned cosine
    is the pair's fp32 cosine. precision="fp32" gives the fp32 pair set (on Triton: a bf16
    screen with a proven error margin, then an fp32 check of each candidate); with tf32/bf16
    the pair set is found at that precision, so pairs within its error of the threshold can
    be missed. device: as in max_cosine.
    """
    from ..ops.max_cosine.naive import pairs_above_reference
    from ..ops.max_cosine.triton import pairs_above_triton
    from ..ops.tiles import bf16_margin

    threshold = check_threshold(threshold, "parent_links", low=-1.0)
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    q, q_norms, _, k, k_norms, _ = _check_pair(large, small, "raise")
    dev = torch.device(device) if device is not None else q.device
    chosen = similarity_backend(backend, dev, "links")
    if chosen == "faiss" and dev.type == "cuda":
        warnings.warn("FAISS has no GPU range search; parent_links runs on the torch backend", stacklevel=2)
        chosen = "torch"
    grid = _grid(chosen, q.shape[0], k.shape[0], q.shape[1], dev)
    qn, kn = _cell(grid, q, q_norms, k, k_norms, dev)
    step = grid.step
    if qn.shape[0] == 0 or kn.shape[0] == 0:
        child = parent = torch.empty(0, dtype=torch.int64, device=dev)
    elif chosen == "triton" and precision == "fp32":
        # Exact fp32 links at bf16 speed: screen with bf16 products at threshold - margin (no
        # pair above threshold can be screened out), then recompute every candidate in fp32 below.
        child, parent, _ = pairs_above_triton(qn, kn, threshold - bf16_margin(q.shape[1]), "bf16")
    elif chosen == "triton":
        child, parent, _ = pairs_above_triton(qn, kn, threshold, precision)
    elif chosen == "faiss":
        child, parent, _ = _pairs_faiss(qn, kn, threshold)
    elif chosen == "cpu" and precision != "bf16" and _cpu_screen("links", q.shape[1]) == "int8":
        from ..ops.max_cosine.int8_cpu import pairs_above_int8_cpu

        child, parent, _ = pairs_above_int8_cpu(qn, kn, threshold)
    elif chosen == "cpu" and precision != "bf16":
        from ..ops.max_cosine.cpu import pairs_above_screened_cpu

        child, parent, _ = pairs_above_screened_cpu(qn, kn, threshold)
    elif chosen == "cpu":
        child, parent, _ = pairs_above_reference(qn, kn, threshold, "bf16", chunk_rows=step)
    else:
        child, parent, _ = pairs_above_reference(qn, kn, threshold, precision, chunk_rows=step)
    # One definition of a pair's cosine for every backend (the fp32 row product sum, as in
    # max_cosine), so values and their order do not depend on the backend's GEMM blocking.
    cos = (qn[child] * kn[parent]).sum(dim=1)
    child, parent = child + grid.q_lo, parent + grid.k_lo
    if step:
        child, parent, cos = dist.gather_cat(child), dist.gather_cat(parent), dist.gather_cat(cos)
    keep = is_parent_link(cos, threshold)
    child, parent, cos = child[keep], parent[keep], cos[keep]
    # Sort by (child, -cos, parent): stable sorts from the last key to the first.
    order = torch.argsort(parent, stable=True)
    order = order[torch.argsort(-cos[order], stable=True)]
    order = order[torch.argsort(child[order], stable=True)]
    return Links(child[order], parent[order], cos[order])


class Nearest(NamedTuple):
    """values: float32 [Fq, k], the k largest cosines of each query row over the key rows, in
    decreasing order; indices: int64 [Fq, k], their key rows (the smaller index first on ties)."""

    values: torch.Tensor
    indices: torch.Tensor


@torch.no_grad()
def nearest_features(query: SAE | torch.Tensor, key: SAE | torch.Tensor, k: int = 5) -> Nearest:
    """The k nearest key decoder rows of every query decoder row by cosine, exact in fp32: each
    cosine is the pair's fp32 row product (as max_cosine and parent_links value a pair), ranked by
    it, the smaller key index first among equal ones. (max_cosine's winner is nearest_features'
    first column.) k is capped at the number of key rows. Zero-norm rows raise.

    Chunked fp32 GEMMs pick the candidates: per query row, every key whose GEMM value is within
    4g (g = d 2^-23, fp32's error bound on a unit-row product) of the row's k-th largest. A key of
    the row products' top k outranks some key t of the GEMM's top k, so its GEMM value is at least
    gemm_t - 4g (GEMM and row product are each within g of the exact product): none is missed.
    Their row products decide. Memory: O(chunk x Fk) (the chunk rule, ops.dispatch.rows_per_chunk)
    and O(Fq k)."""
    from ..ops.dispatch import rows_per_chunk

    if not isinstance(k, int) or k < 1:
        raise InvalidArgumentError(f"nearest_features: k must be a whole number >= 1, got {k!r}")
    q, q_norms, _, key_rows, k_norms, _ = _check_pair(query, key, "raise")
    qn, kn = _unit(q, q_norms), _unit(key_rows, k_norms)
    k = min(k, kn.shape[0])
    slack = 4 * qn.shape[1] * 2**-23
    values = torch.empty(qn.shape[0], k, dtype=torch.float32, device=qn.device)
    indices = torch.empty(qn.shape[0], k, dtype=torch.int64, device=qn.device)
    step = rows_per_chunk(4 * kn.shape[0], qn.device)
    for s in range(0, qn.shape[0], step):
        sims = qn[s : s + step] @ kn.t()
        cut = sims.topk(k, dim=1).values[:, -1:] - slack
        r, c = (sims >= cut).nonzero(as_tuple=True)  # the candidates, few beyond k per row
        exact = (qn[s + r] * kn[c]).sum(dim=1)
        # rank each row's candidates by (-fp32 value, key index): sort by key, then stably by value
        order = torch.argsort(c, stable=True)
        order = order[torch.argsort(-exact[order], stable=True)]
        order = order[torch.argsort(r[order], stable=True)]
        r, c, exact = r[order], c[order], exact[order]
        starts = torch.searchsorted(r, torch.arange(sims.shape[0], device=r.device))
        take = starts[:, None] + torch.arange(k, device=r.device)
        values[s : s + step], indices[s : s + step] = exact[take], c[take]
    return Nearest(values, indices)


def novel_fraction_sweep(
    max_cos: torch.Tensor, thresholds: tuple[float, ...] | torch.Tensor = SWEEP_THRESHOLDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many features are novel (max cos <= t) at each threshold t, from one max_cosine pass.

    max_cos: [F] values from max_cosine (NaN rows count as neither). Returns (thresholds
    float32 [T], n_novel int64 [T]).
    """
    t = torch.as_tensor(thresholds, dtype=torch.float32)
    v = max_cos.detach().float().cpu()
    return t, torch.stack([is_novel(v, float(ti)).sum() for ti in t]) if len(t) else t.long()
