"""Shared test helpers: SAEs with random weights, small SAE pairs, known geometry."""

import math

import torch

from stitchkit import SAE
from stitchkit.ops.dispatch import triton_interpreting

DEVICE = "cpu" if triton_interpreting() else "cuda"

TEXTS = [f"Sentence number {i} says something about {w}." for i, w in enumerate("abcdefghijklmnopqrst")]


class Interrupt(Exception):
    pass


def random_sae(activation="relu", d_in=7, d_sae=11, seed=0, **kw):

    g = torch.Generator().manual_seed(seed)
    if activation in ("topk", "batchtopk"):
        kw.setdefault("k", 3)
    sae = SAE(d_in, d_sae, activation, generator=g, name=kw.pop("name", f"{activation}-{seed}"), **kw)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g))
        if activation == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
        if activation == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae


def pair(dtype=torch.float64, donor_activation="relu", d_in=9, seed=0):
    base = random_sae("relu", d_in=d_in, d_sae=13, seed=seed, dtype=dtype, name="base")
    donor = random_sae(donor_activation, d_in=d_in, d_sae=29, seed=seed + 1, dtype=dtype, name="donor")
    x = torch.randn(700, d_in, generator=torch.Generator().manual_seed(seed + 2), dtype=dtype) * 2 + 0.5
    return base, donor, x


def unit(v):
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / v.norm()


def rotated(a, b, angle_cos):
    """A unit vector at cosine `angle_cos` to unit a, in the plane of a and b."""
    b = b - (b @ a) * a
    b = b / b.norm()
    return angle_cos * a + math.sqrt(1 - angle_cos**2) * b


def built_pair():
    """Small and large SAEs (d_in=6) with a known link graph at threshold 0.7."""
    e = torch.eye(6, dtype=torch.float64)
    s_mid = unit(e[1] + e[2])
    small_rows = [e[0], rotated(s_mid, e[1], 0.95), rotated(s_mid, e[2], 0.95), e[3], e[5]]
    # small 1 and 2 are at cos ~0.81 of each other: a large row between them links to both.
    large_rows = [
        rotated(e[0], e[4], 0.9),  # child of small 0                       (group A)
        rotated(e[0], e[5], 0.8),  # child of small 0, cos 0.8 to e5? no: 0.6 -> only small 0
        s_mid,  # links small 1 and small 2                                 (group B)
        rotated(small_rows[2], e[4], 0.75),  # child of small 2             (group B)
        e[4],  # novel: cos 0 to everything small
        rotated(e[3], e[4], 0.72),  # child of small 3, cos 0.72            (group C)
    ]
    small = SAE(6, 5, name="small", dtype=torch.float64)
    large = SAE(6, 6, name="large", dtype=torch.float64)
    with torch.no_grad():
        small.W_dec.copy_(torch.stack(small_rows))
        small.W_enc.copy_(small.W_dec.T)
        large.W_dec.copy_(torch.stack(large_rows))
        large.W_enc.copy_(large.W_dec.T)
        large.b_enc.fill_(-0.1)
    return small, large


def sae_tensors(d_in, d_sae, seed, dtype=torch.float32, bias=-0.5):
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.full((d_sae,), bias) + 0.1 * torch.randn(d_sae, generator=g)
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    b_dec = 0.1 * torch.randn(d_in, generator=g)
    th = 0.2 * torch.rand(d_sae, generator=g)
    return [t.to(DEVICE, dtype) for t in (W_enc, b_enc, W_dec, b_dec, th)]


def hub_folder(cache, repo_id: str, revision: str = "main", sha: str | None = None):
    """A Hugging Face hub cache laid out by hand (what huggingface_hub leaves after a download):
    <cache>/models--OWNER--NAME/refs/<revision> holding a commit hash, and the files under
    snapshots/<hash>/. Returns the snapshot folder to put the repository's files in."""
    from pathlib import Path

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    sha = sha or (format(abs(hash((repo_id, revision))), "x") * 5)[:40]
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _rank_main(rank: int, world: int, rdv: str, out: str, fn, args) -> None:
    import faulthandler
    import os
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    # A rank that aborts (CI once saw SIGABRT, "terminate called without an active exception",
    # not reproduced in dozens of local runs) prints every thread's Python stack first.
    faulthandler.enable(all_threads=True)
    dist.init_process_group(
        "gloo", init_method=f"file://{rdv}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.save(fn(rank, *args), f"{out}.{rank}")
        dist.barrier()  # no rank tears its connections down while another still reads from them
    finally:
        dist.destroy_process_group()
    # The result is saved and the group is down: leave without the interpreter's teardown, where
    # gloo's, OpenMP's and numba's thread pools are destroyed in no fixed order.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, *args, tmp_path) -> list:
    """fn(rank, *args) on `world` processes joined in a gloo group (torch.multiprocessing spawn),
    the way torchrun runs them; returns each rank's return value (torch.save-able), in rank order.
    fn must be a module-level function (spawn imports it by name)."""
    import torch
    import torch.multiprocessing as mp

    tmp_path.mkdir(parents=True, exist_ok=True)
    rdv, out = str(tmp_path / f"rdv-{world}"), str(tmp_path / f"out-{world}")
    mp.spawn(_rank_main, args=(world, rdv, out, fn, args), nprocs=world, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
