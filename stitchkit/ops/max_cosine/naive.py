"""The torch reference of max_ip and pairs_above (see stitchkit.ops.max_cosine): chunked matmuls."""

from __future__ import annotations

import torch

from ..dispatch import rows_per_chunk


def _chunk_rows(n_keys: int, device: torch.device, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    return rows_per_chunk(4 * n_keys, device)


def _matmul(q: torch.Tensor, k: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "bf16":
        return (q.bfloat16() @ k.bfloat16().t()).float()
    if q.is_cuda:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            return q @ k.t()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return q @ k.t()


def max_ip_reference(
    qn: torch.Tensor, kn: torch.Tensor, precision: str = "fp32", chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked torch reference for max_ip (see module doc)."""
    step = _chunk_rows(kn.shape[0], qn.device, chunk_rows)
    values = torch.empty(qn.shape[0], dtype=torch.float32, device=qn.device)
    indices = torch.empty(qn.shape[0], dtype=torch.int64, device=qn.device)
    for s in range(0, qn.shape[0], step):
        sims = _matmul(qn[s : s + step], kn, precision)
        values[s : s + step], indices[s : s + step] = sims.max(dim=1)
    return values, indices


def pairs_above_reference(
    qn: torch.Tensor,
    kn: torch.Tensor,
    threshold: float,
    precision: str = "fp32",
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked torch reference for pairs_above (see module doc)."""
    step = _chunk_rows(kn.shape[0], qn.device, chunk_rows)
    out_i, out_j, out_v = [], [], []
    for s in range(0, qn.shape[0], step):
        sims = _matmul(qn[s : s + step], kn, precision)
        i, j = (sims > threshold).nonzero(as_tuple=True)
        out_i.append(i + s)
        out_j.append(j)
        out_v.append(sims[i, j])
    if not out_i:
        empty = torch.empty(0, dtype=torch.int64, device=qn.device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.float32, device=qn.device)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_v)
