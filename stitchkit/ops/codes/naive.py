"""Torch references of the sparse-code operations (see stitchkit.ops.codes for the formats):
plain gathers, index_add_ and dense chunks, chunked by tokens to fit the memory budget."""

from __future__ import annotations

import torch

from ..dispatch import rows_per_chunk


def _token_chunk(k: int, d: int, device: torch.device) -> int:
    return rows_per_chunk(4 * k * d, device)


def sparse_decode_reference(
    idx: torch.Tensor,
    val: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference for sparse_decode (see module doc): gather, weight, sum, chunked by tokens."""
    n, k = idx.shape
    out = torch.empty(n, W_dec.shape[1], dtype=torch.float32, device=W_dec.device)
    step = _token_chunk(k, W_dec.shape[1], W_dec.device)
    for s in range(0, n, step):
        i, v = idx[s : s + step].long(), val[s : s + step].float()
        v = torch.where(i >= 0, v, torch.zeros_like(v))
        rows = W_dec[i.clamp_min(0)].float()  # [chunk, k, d]
        out[s : s + step] = (v[..., None] * rows).sum(1) + b_dec.float()
    err = None if x is None else (out - x.float()).pow(2).sum(1)
    return out, err


def sparse_decoder_grad_reference(
    idx: torch.Tensor, val: torch.Tensor, g: torch.Tensor, d_sae: int
) -> torch.Tensor:
    """Torch reference for sparse_decoder_grad (see module doc), via index_add_ over chunks."""
    n, k = idx.shape
    d = g.shape[1]
    out = torch.zeros(d_sae, d, dtype=torch.float32, device=g.device)
    step = _token_chunk(k, d, g.device)
    for s in range(0, n, step):
        i, v = idx[s : s + step].long(), val[s : s + step].float()
        ok = i >= 0
        contrib = v[..., None] * g[s : s + step].float()[:, None, :]  # [chunk, k, d]
        out.index_add_(0, i[ok], contrib[ok])
    return out


def _dense_chunk(idx: torch.Tensor, val: torch.Tensor, width: int) -> torch.Tensor:
    i = idx.long()
    v = torch.where(i >= 0, val.float(), torch.zeros((), device=val.device))
    return torch.zeros(len(i), width, device=val.device).scatter_add_(1, i.clamp_min(0), v)


def coactivation_reference(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor, d_a: int, d_b: int
) -> torch.Tensor:
    """Torch reference for coactivation (see module doc): dense token chunks, then A^T B."""
    out = torch.zeros(d_a, d_b, dtype=torch.float32, device=val_a.device)
    step = rows_per_chunk(4 * (d_a + d_b), val_a.device)
    for s in range(0, idx_a.shape[0], step):
        a = _dense_chunk(idx_a[s : s + step], val_a[s : s + step], d_a)
        b = _dense_chunk(idx_b[s : s + step], val_b[s : s + step], d_b)
        out += a.T @ b
    return out


def sparse_rowdot_reference(idx: torch.Tensor, g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Torch reference for sparse_rowdot (see module doc), chunked by tokens."""
    n, k = idx.shape
    out = torch.zeros(n, k, dtype=torch.float32, device=g.device)
    step = _token_chunk(k, W.shape[1], g.device)
    for s in range(0, n, step):
        i = idx[s : s + step].long()
        dots = (W[i.clamp_min(0)].float() * g[s : s + step].float()[:, None, :]).sum(-1)
        out[s : s + step] = torch.where(i >= 0, dots, torch.zeros_like(dots))
    return out
