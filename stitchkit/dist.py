"""torch.distributed, the one place stitchkit talks to it. Outside a process group (no torchrun,
no init_process_group) every function here is the single-process identity, so callers never
branch on it.

    world(), rank(), is_main()     the group's size and this process's place (1, 0, True alone)
    init_from_env()                under torchrun (WORLD_SIZE in the environment) join the default
                                   group: NCCL when CUDA is there, gloo otherwise; the CLI calls it
    timeout_s()                    how long a collective waits for a silent rank
                                   (STITCHKIT_DIST_TIMEOUT, default 600 s)
    shard(n, align=1)              this rank's [lo, hi) of n items: contiguous, in rank order,
                                   boundaries on multiples of `align` (so every rank runs the same
                                   chunk shapes one process would); a rank may get nothing
    split(n, parts, part, align)   the same cut into `parts` pieces, piece `part` (key x query grids)
    mine(i)                        whether item i of a stream belongs to this rank (i % world)
    all_sum_(t), all_sum(x)        sum a tensor over ranks in place (float64 stays float64), or a
                                   Python number
    all_sum_many_(tensors)         sum several tensors in place with one collective per dtype (a
                                   training step's gradients: one message instead of one each)
    gather_cat(t)                  every rank's tensor concatenated in rank order (shards of dim 0)
    broadcast(obj)                 rank 0's Python object on every rank
    alone()                        a context in which this rank computes as the only process
    count(kind, n), work_record()  each rank's work, and the record of it an output JSON keeps

A collective runs on the device the group's backend needs (CUDA for NCCL), and the answer comes
back on the caller's device.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch

DEFAULT_TIMEOUT_S = 600  # a rank that stops answering fails the collective on the others


_ALONE = False


def _dist():
    import torch.distributed as d

    return d if not _ALONE and d.is_available() and d.is_initialized() else None


@contextlib.contextmanager
def alone():
    """Within it this rank computes as if it were the only process (world() == 1): for work that
    is split by whole items (an SAE per rank) rather than within them."""
    global _ALONE
    old, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = old


def world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the default process group when launched by torchrun; True when a group is up."""
    import torch.distributed as d

    if d.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    d.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    return True


def timeout_s() -> float:
    """Seconds a collective waits for a rank that stopped answering (STITCHKIT_DIST_TIMEOUT)."""
    return float(os.environ.get("STITCHKIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def close(barrier: bool = True) -> None:
    """Leave the group: after a barrier (unless this rank failed and the others may be elsewhere),
    so no rank closes its connections while another still reads from them (gloo aborts the reader
    then)."""
    d = _dist()
    if d:
        try:
            if barrier:
                d.barrier()
        finally:
            d.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    d = _dist()
    if d and d.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(n: int, align: int = 1) -> tuple[int, int]:
    """This rank's contiguous [lo, hi) of n items, in rank order, boundaries on multiples of align."""
    return split(n, world(), rank(), align)


def split(n: int, parts: int, part: int, align: int = 1) -> tuple[int, int]:
    """Part `part` of `parts` contiguous, ordered pieces [lo, hi) of n items, boundaries on
    multiples of align (shard is this rank's piece of world() of them)."""
    if parts == 1:
        return 0, n
    blocks = -(-n // align)
    lo_b, hi_b = part * blocks // parts, (part + 1) * blocks // parts
    return min(lo_b * align, n), min(hi_b * align, n)


def mine(i: int) -> bool:
    return i % world() == rank()


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks, in place; returns it."""
    d = _dist()
    if not d:
        return t
    dev = _comm_device(t)
    buf = t.to(dev) if t.device != dev else t
    d.all_reduce(buf, op=d.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_sum_many_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each of `tensors` over ranks, in place, with one all-reduce per dtype: they are packed
    into one flat buffer and unpacked after. Each element is summed as all_sum_ would (ranks in
    the backend's order). Returns the tensors."""
    d = _dist()
    if not d or not tensors:
        return tensors
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        all_sum_(flat)
        at = 0
        for t in group:
            t.copy_(flat[at : at + t.numel()].view_as(t))
            at += t.numel()
    return tensors


def all_sum(value: int | float) -> int | float:
    """A Python number summed over ranks (in float64), of the same type."""
    if not _dist():
        return value
    return type(value)(all_sum_(torch.tensor([value], dtype=torch.float64)).item())


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same dims but the first, which may differ, also 0) concatenated in rank
    order, on every rank."""
    d = _dist()
    if not d:
        return t
    dev = _comm_device(t)
    sizes = [None] * world()
    d.all_gather_object(sizes, int(t.shape[0]))
    top = max(sizes)
    buf = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=dev)
    buf[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(buf) for _ in range(world())]
    d.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(t.device)


def gather_objects(obj) -> list:
    d = _dist()
    if not d:
        return [obj]
    out = [None] * world()
    d.all_gather_object(out, obj)
    return out


def broadcast(obj):
    d = _dist()
    if not d:
        return obj
    box = [obj if is_main() else None]
    d.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


_WORK: dict[str, int] = {}


def count(kind: str, n: int) -> None:
    """Note n items of work of `kind` (tokens, query rows) done by this rank (work_record)."""
    _WORK[kind] = _WORK.get(kind, 0) + int(n)


def work_record() -> dict:
    """What an output records of the split: the world size and each rank's counted work since the
    process started (a collective: every rank must call it)."""
    return {"world_size": world(), "work_per_rank": gather_objects(dict(_WORK))}
