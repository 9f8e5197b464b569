"""Decoder retraining with the encoder frozen: an optimiser (Adam on MSE) or least squares.

With the encoder frozen every token's code f(x) is fixed, so refitting the decoder is a linear
regression x ~ b + f W_dec. Changing b_dec would shift the encoder's input (x - b_dec), so the
change is folded into the encoder bias (b_enc += (b_new - b_old) W_enc, in float64): every
feature's activation on every token is exactly what it was before retraining.
Decoder rows are not renormalised (nothing downstream needs unit rows; cosines are scale-free).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import dist
from ..data.streams import ActsLike, as_activations
from ..errors import InvalidArgumentError
from ..measure.accumulator import run_pass
from ..measure.normal import NormalEquationsAccumulator
from ..ops.codes import SparseDecode
from ..ops.codes.cpu import decode_nonzeros, nonzeros_cpu
from ..ops.dispatch import rows_per_chunk, sae_route, stage_memory
from ..sae.model import SAE
from .cg import SparseCodes, solve_cg
from .checkpoint import StateFile, batch_digest, fingerprint
from .optim import adam, fresh_casts

METHODS = ("adam", "lstsq")


@dataclass
class RetrainResult:
    """The retrained SAE (a new module; the input is untouched), the method, wall-clock seconds
    and optimiser steps taken (lstsq: CG iterations, 0 for the dense solve), and whether it resumed
    from a checkpoint."""

    sae: SAE
    method: str
    seconds: float
    steps: int
    resumed: bool = False
    algorithm: str = ""  # lstsq: which solve ran ("dense normal equations" or CG's report)


def with_decoder(sae: SAE, W_dec: torch.Tensor, b_dec: torch.Tensor) -> SAE:
    """A copy of `sae` decoding with W_dec [d_sae, d_in] and b_dec [d_in], b_dec's change folded
    into the encoder bias so that every feature's activation is what it was (module doc)."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        delta = b_dec.double() - sae.b_dec.detach().double()
        if sae.apply_b_dec_to_input:
            out.b_enc.copy_((sae.b_enc.detach().double() + delta @ sae.W_enc.detach().double()).to(sae.dtype))
        out.W_dec.copy_(W_dec.to(sae.dtype))
        out.b_dec.copy_(b_dec.to(sae.dtype))
    return out.eval()


def retrain_decoder(
    sae: SAE,
    acts: ActsLike,
    *,
    method: str = "adam",
    epochs: int = 1,
    lr: float = 1e-3,
    ridge: float = 1e-6,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 200,
    sparse_gram: bool | None = None,
    progress: Callable[[int], None] | None = None,
    solver: str = "auto",
    tol: float = 1e-5,
    max_iter: int = 500,
    mse_tol: float | None = 1e-7,
) -> RetrainResult:
    """Refit `sae`'s W_dec and b_dec to minimise MSE over `acts`, the encoder frozen.

    method="adam": `epochs` passes of Adam (one step per batch) from the current decoder.
        With `checkpoint` (a file path) the decoder, optimiser state and step are saved there
        atomically every `checkpoint_every` steps and at the end; a run given an existing
        checkpoint resumes from it (skipping the batches already used: `acts` must replay the
        same batches, e.g. a tensor, a list or a seeded callable).
    method="lstsq": one pass accumulating the normal equations [f 1]^T [f 1] and [f 1]^T x in
        float64, then one solve. On the CPU, codes sparse enough take only their nonzero
        products, in float64 (ops.gram: 17x the dense GEMM for 10,811 features at L0 220;
        `sparse_gram` True / False forces that choice, None leaves it to the rule).
        `ridge` * mean(diag) pulls each row towards its current value, so features
        that never fire keep their decoder row. `solver`: "dense" (memory 32 bytes x d_sae^2,
        time O(d_sae^3)), "cg" (fit.cg: conjugate gradients with the Gram implicit, memory
        about 40 bytes per code nonzero, stops at relative residual `tol` or `max_iter`; at
        12,288 x 768 on 20,000 tokens tol 1e-4 left the MSE within 3e-9 of the dense optimum,
        bench/results/cpu_refit.json), or
        "auto": dense where it fits dispatch.stage_memory, else cg (`lstsq_solver`). The
        result's `algorithm` says which ran.
    `progress(step)` after each Adam step or lstsq batch (CG: then after each iteration, counting
    on from the batches).
    Across ranks (stitchkit.dist): Adam is data-parallel over the same global batch sequence (each
    rank takes its rows of every batch, the gradients are summed, every rank takes the same step),
    so the result is one process's within float rounding; only rank 0 writes the checkpoint.
    lstsq gives batch i to rank i % world and sums the normal equations in float64.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"retrain_decoder: method must be one of {METHODS}, got {method!r}")
    stream = as_activations(acts, multi_pass=method == "adam" and epochs > 1, what="retrain_decoder: acts")
    t0 = time.perf_counter()
    if method == "lstsq":
        if solver not in ("auto", "dense", "cg"):
            raise InvalidArgumentError(
                f"retrain_decoder: solver must be 'auto', 'dense' or 'cg', got {solver!r}"
            )
        return _lstsq(sae, stream, ridge, sparse_gram, progress, t0, solver, tol, max_iter, mse_tol)
    if epochs < 1:
        raise InvalidArgumentError(f"retrain_decoder: epochs must be >= 1, got {epochs}")

    W = sae.W_dec.detach().clone().float().requires_grad_(True)
    b = sae.b_dec.detach().clone().float().requires_grad_(True)
    opt = adam([W, b], lr)
    start_step, resumed = 0, False
    # The SAE's weights and the data's first batch name the run, with the recipe: a checkpoint of
    # another SAE or other data is refused, never resumed.
    signature = dict(scheme=2, name=sae.name, d_in=sae.d_in, d_sae=sae.d_sae, lr=lr, epochs=epochs,
                     weights=fingerprint(sae))  # fmt: skip
    ckpt = None

    def resume(first: torch.Tensor) -> StateFile:
        nonlocal start_step, resumed
        ck = StateFile(checkpoint, dict(signature, first_batch=batch_digest(first)), "retrain_decoder")
        state = ck.load(map_location=sae.device)
        if state is not None:
            with torch.no_grad():
                W.copy_(state["W_dec"])
                b.copy_(state["b_dec"])
            opt.load_state_dict(state["optimizer"])
            start_step, resumed = int(state["step"]), True
        return ck

    def save(step: int) -> None:
        if ckpt.path is not None:
            ckpt.save(dict(W_dec=W.detach(), b_dec=b.detach(), optimizer=opt.state_dict(), step=step))

    fused = sae_route(sae.device, sae.dtype, eval_mode=not sae.training) == "triton"
    step, world = 0, dist.world()
    for _ in range(epochs):
        for x in stream.batches(sae.d_in, sae.device):
            if ckpt is None:
                ckpt = resume(x)
            if step < start_step:
                step += 1
                continue
            n_global = x.shape[0]
            if world > 1:  # this rank's rows of the global batch
                lo, hi = dist.shard(n_global)
                x = x[lo:hi]
            dist.count("tokens", x.shape[0])
            opt.zero_grad(set_to_none=False)
            if x.shape[0]:
                if fused:  # sparse codes, sparse decode and gradient
                    with torch.no_grad():
                        st = sae.sparse_forward(x)
                    err = SparseDecode.apply(st.indices, st.values, W, b) - x.float()
                else:
                    with torch.no_grad():
                        f = sae.encode(x).float()
                    # On the CPU, codes sparse enough decode (and back-propagate) through their
                    # nonzeros alone: 8x the dense f @ W at 94,781 x 768, L0 177 (2-core AMD EPYC).
                    nz = nonzeros_cpu(f) if f.device.type == "cpu" else None
                    err = (f @ W + b if nz is None else decode_nonzeros(nz, W, b)) - x.float()
                    del f
                loss = err.pow(2).sum(1).sum() / max(n_global, 1)  # the global batch's mean
                loss.backward()
            for p in (W, b):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if world > 1:
                dist.all_sum_many_([W.grad, b.grad])
            opt.step()
            fresh_casts(x.device)
            step += 1
            if step % checkpoint_every == 0:
                save(step)
            if progress is not None:
                progress(step)
    if step == 0:
        raise InvalidArgumentError(f"retrain_decoder: the activation stream for SAE {sae.name!r} was empty")
    save(step)
    out = with_decoder(sae, W.detach(), b.detach())
    return RetrainResult(out, "adam", time.perf_counter() - t0, step - start_step, resumed)


# Peak bytes of the dense solve per entry of its [m, m] float64 matrix: the accumulator, its
# symmetrised result, the solve's sub-block and the solver's factorisation (issue 29 measured
# 5.41 GB at 12,288 features and 20.4 GB at 23,451: about 32 m^2).
_DENSE_BYTES = 32


def lstsq_solver(d_sae: int, d_in: int, device: torch.device) -> str:
    """'dense' where the dense normal equations fit the stage's memory (dispatch.stage_memory),
    else 'cg' (fit.cg: no [d_sae, d_sae] matrix)."""
    m = d_sae + 1
    need = _DENSE_BYTES * m * m + 24 * m * d_in
    return "dense" if need <= stage_memory(device) else "cg"


@torch.no_grad()
def _lstsq(sae: SAE, stream, ridge: float, sparse: bool | None, progress, t0: float, solver: str,
           tol: float, max_iter: int, mse_tol: float | None) -> RetrainResult:  # fmt: skip
    if solver == "auto":
        solver = lstsq_solver(sae.d_sae, sae.d_in, sae.device)
    if solver == "cg":
        return _lstsq_cg(sae, stream, ridge, progress, t0, tol, max_iter, mse_tol)
    acc = NormalEquationsAccumulator([sae])
    acc.sparse = sparse  # None: the rule decides on the first chunk
    batches = [0]

    def counted(_tokens: int) -> None:
        batches[0] += 1
        progress(batches[0])

    n = run_pass([acc], stream, d_in=sae.d_in, device=sae.device, progress=counted if progress else None)
    if n == 0:
        raise InvalidArgumentError(f"retrain_decoder: the activation stream for SAE {sae.name!r} was empty")
    sol = acc.result().solve(torch.arange(sae.d_sae), sae.W_dec.detach(), ridge).to(sae.device)
    out = with_decoder(sae, sol[:-1], sol[-1])
    return RetrainResult(out, "lstsq", time.perf_counter() - t0, 0, algorithm="dense normal equations")


@torch.no_grad()
def _lstsq_cg(
    sae: SAE, stream, ridge: float, progress, t0: float, tol: float, max_iter: int, mse_tol: float | None
) -> RetrainResult:
    """The lstsq refit by fit.cg: one pass keeps the codes' nonzeros and c1^T x, then CG."""
    F, d, dev = sae.d_sae, sae.d_in, sae.device
    codes = SparseCodes(F)
    B = torch.zeros(F + 1, d, dtype=torch.float64, device=dev)
    diag = torch.zeros(F + 1, dtype=torch.float64, device=dev)
    rows = rows_per_chunk(8 * F, dev)
    i = n = nb = 0
    xs: list[torch.Tensor] = []  # this rank's tokens, for c^T x in one pass once every code is kept
    sxx = torch.zeros((), dtype=torch.float64, device=dev)
    for x in stream.batches(d, dev):
        n += x.shape[0]
        nb += 1
        for chunk in x.split(rows):
            if dist.mine(i):  # chunk i to rank i % world; the products all-reduce
                kept = codes.add(sae.encode(chunk))  # diag from the nonzeros, not f's GEMM
                xs.append(chunk.detach())
                xd = chunk.double()
                B[F] += xd.sum(0)
                sxx += xd.pow(2).sum()
                diag[:F] += kept.sq_sums(F)
                diag[F] += len(chunk)
            i += 1
        if progress is not None:
            progress(nb)
    if n == 0:
        raise InvalidArgumentError(f"retrain_decoder: the activation stream for SAE {sae.name!r} was empty")
    if xs:
        B[:F] = codes.t_times(torch.cat(xs).double())
    del xs
    dist.all_sum_many_([B, diag, sxx])
    lam = ridge * float(diag[:F].mean().clamp_min(1e-12)) if F else 0.0
    reg = torch.full((F + 1,), lam, dtype=torch.float64, device=dev)
    reg[F] = 0.0
    x0 = torch.cat([sae.W_dec.detach().double(), sae.b_dec.detach().double()[None]])
    B[:F].add_(x0[:F], alpha=lam)  # the right-hand side in place: B + reg [W_old; 0]
    report_progress = (lambda it, res: progress(nb + it)) if progress else None  # noqa: E731
    constant = float(sxx) + lam * float(x0[:F].pow(2).sum())  # the objective's: sum |x|^2 + ridge |W_old|^2
    sol, report = solve_cg(codes, B, diag, reg, x0, tol=tol, max_iter=max_iter, progress=report_progress,
                           inplace=True, mse_tol=mse_tol, constant=constant)  # fmt: skip
    out = with_decoder(sae, sol[:-1], sol[-1])
    secs = time.perf_counter() - t0
    return RetrainResult(out, "lstsq", secs, report.iterations, algorithm=report.describe())
