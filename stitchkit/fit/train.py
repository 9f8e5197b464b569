"""Training SAEs on a stream of activations (the reference work's ReLU + L1 SAE, and top-k)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import dist
from ..atomic import RESTART_HINT, atomic_write_json, claim_dir, decided, differences, read_json, writes
from ..errors import CorruptFileError, InvalidArgumentError, RunMismatchError
from ..sae.activations import ACTIVATIONS
from ..sae.io import load_sae, remove_sae_dir, save_sae
from ..sae.model import SAE
from .checkpoint import StateFile, batch_digest
from .optim import adam, fresh_casts

TRAIN_RECORD = "stitchkit_train.json"  # train_family's recipe of the SAE in a directory
CHECKPOINT_SCHEME = 2  # bumped when what a training checkpoint's signature holds changes


def _peek(batches: Iterable[torch.Tensor]) -> tuple[Iterable[torch.Tensor], torch.Tensor | None]:
    """(the same batches, the first of them or None): the first batch names the data."""
    it = iter(batches)
    first = next(it, None)
    return (itertools.chain([first], it) if first is not None else iter(())), first


@dataclass
class TrainLog:
    """What train_sae saw: steps taken, the last loss, and per feature the number of tokens since
    it last fired (int64 [d_sae]); dead_fraction counts features silent for `dead_tokens`."""

    steps: int = 0
    loss: float = float("nan")
    tokens_since_fired: torch.Tensor | None = None
    dead_tokens: int = 0
    resumed_from: int = 0

    @property
    def dead_fraction(self) -> float:
        t = self.tokens_since_fired
        return float((t >= self.dead_tokens).float().mean()) if t is not None and len(t) else 0.0


def train_sae(
    batches: Iterable[torch.Tensor],
    d_in: int,
    d_sae: int,
    *,
    activation: str = "relu",
    k: int | None = None,
    l1_coefficient: float = 1e-3,
    lr: float = 1e-3,
    seed: int = 0,
    name: str = "sae",
    hook_name: str | None = None,
    n_steps: int | None = None,
    warmup_steps: int = 0,
    lr_decay: float = 0.2,
    dead_tokens: int = 1_000_000,
    checkpoint=None,
    checkpoint_every: int = 500,
    log: TrainLog | None = None,
    progress: Callable[[int, float], None] | None = None,
    watch: Mapping[int, Callable[[SAE], None]] | None = None,
) -> SAE:
    """Train an SAE with Adam on `batches` ([n, d_in] each), one step per batch.

    Loss: MSE + l1_coefficient * sum f (see SAE.loss). Decoder rows are kept at unit norm
    (and the gradient's radial part removed), so L1 cannot shrink features by growing the
    decoder. The SAE is made on the first batch's device; b_dec starts at that batch's mean.
    Schedule: the learning rate warms up linearly over `warmup_steps`; with `n_steps` (the number
    of batches) the L1 coefficient also warms up over the first 5% of steps and the learning rate
    decays linearly to zero over the last `lr_decay` of them (0.2: Anthropic's April 2024
    recipe, which leaves far fewer weakly-firing features). On a CUDA device a relu SAE trains
    on the sparse kernels.
    Dead features: `log` (a TrainLog) receives tokens since each feature last fired; a feature
    silent for `dead_tokens` counts as dead. `checkpoint` (a file path): the SAE, optimiser and
    step are saved there atomically every `checkpoint_every` steps; a run that finds one resumes
    from it, skipping the batches already used (so `batches` must replay the same sequence).
    `progress(step, loss)` after each step; `watch[step](sae)` after that step, the SAE in eval
    mode for the call (a held-out measurement mid-training). Returns the trained SAE in eval mode.
    Across ranks (stitchkit.dist): data-parallel over the same global batch sequence: every rank
    reads each batch, takes its rows, and the gradients (weighted by rows) are summed, so every
    rank takes the same step (one process's result within float rounding); rank 0 alone writes
    the checkpoint.
    """
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(
            f"train_sae: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}"
        )
    with_l1 = ACTIVATIONS[activation].trains_with_l1
    if with_l1 and l1_coefficient <= 0:
        raise InvalidArgumentError(f"train_sae: a {activation} SAE needs l1_coefficient > 0 to become sparse")
    if not 0 < lr_decay <= 1:
        raise InvalidArgumentError(f"train_sae: lr_decay must lie in (0, 1], got {lr_decay}")
    if n_steps is not None and n_steps < 1:
        raise InvalidArgumentError(f"train_sae: n_steps must be >= 1, got {n_steps}")
    g = torch.Generator().manual_seed(seed)
    sae = SAE(
        d_in,
        d_sae,
        activation,
        k=k,
        l1_coefficient=l1_coefficient if with_l1 else 0.0,
        name=name,
        hook_name=hook_name,
        generator=g,
    )
    log = log if log is not None else TrainLog()
    log.dead_tokens = dead_tokens
    batches, first = _peek(batches)
    # Everything that changes the trained weights: a checkpoint of another recipe or other data
    # (its first batch differs) is refused, never resumed.
    signature = dict(scheme=CHECKPOINT_SCHEME, name=name, d_in=d_in, d_sae=d_sae, activation=activation,
                     k=k, lr=lr, seed=seed, l1_coefficient=l1_coefficient, n_steps=n_steps,
                     warmup_steps=warmup_steps, lr_decay=lr_decay,
                     first_batch=None if first is None else batch_digest(first))  # fmt: skip
    ckpt = StateFile(checkpoint, signature, "train_sae")
    opt, start = None, 0
    state = ckpt.load()
    if state is not None:
        start = log.resumed_from = int(state["step"])
    sae.train()
    step, world = 0, dist.world()
    since = None
    for x in batches:
        sae._check_input(x, "training batch")
        if step < start:
            step += 1
            continue
        if opt is None:  # the SAE lives where the data does
            sae.to(x.device)
            opt = adam(sae.parameters(), lr)
            if state is not None:
                sae.load_state_dict(state["sae"])
                opt.load_state_dict(state["optimizer"])
                since = state["tokens_since_fired"].to(x.device)
            else:
                with torch.no_grad():
                    sae.b_dec.copy_(x.mean(0))
                since = torch.zeros(d_sae, dtype=torch.int64, device=x.device)
        scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if n_steps is not None:
            frac = step / n_steps
            sae.l1_coefficient = l1_coefficient * min(1.0, frac / 0.05) if with_l1 else 0.0
            scale *= min(1.0, max(0.0, (1 - frac) / lr_decay))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        if world > 1:
            loss, fired = _ranked_step(sae, opt, x)
        else:
            out = sae.loss(x)
            loss, fired = out.total, out.fired
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with torch.no_grad():
            w = sae.W_dec
            unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            w.grad -= (w.grad * unit).sum(1, keepdim=True) * unit
        opt.step()
        fresh_casts(x.device)
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            since += x.shape[0]
            if fired is not None:
                since.masked_fill_(fired, 0)
            elif step % 10 == 0:  # the sparse kernels report no per-feature activity: look every 10 steps
                since.masked_fill_((sae.encode(x) > 0).any(0), 0)
        step += 1
        log.steps, log.loss = step, loss.item()
        if step % checkpoint_every == 0:
            _save_checkpoint(ckpt, sae, opt, step, since)
        if progress is not None:
            progress(step, log.loss)
        if watch and step in watch:
            sae.eval()
            watch[step](sae)
            sae.train()
    if step == 0:
        raise InvalidArgumentError(f"train_sae: no training batches were given for SAE {name!r}")
    if opt is None:
        raise InvalidArgumentError(
            f"train_sae: checkpoint {ckpt.path} is at step {start} but the batches ran out at {step}"
        )
    _save_checkpoint(ckpt, sae, opt, step, since)
    log.tokens_since_fired = since.cpu()
    sae.l1_coefficient = l1_coefficient if with_l1 else 0.0
    return sae.eval()


def _ranked_step(sae: SAE, opt, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This rank's share of one data-parallel step on the global batch x: its rows' loss weighted
    by rows / all rows, backward, gradients summed over ranks. Returns the global loss and the
    features that fired on some token of the global batch (or None)."""
    n = x.shape[0]
    lo, hi = dist.shard(n)
    mine = x[lo:hi]
    dist.count("tokens", hi - lo)
    opt.zero_grad(set_to_none=False)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64, device=x.device)
    loss = torch.zeros((), device=x.device)
    if mine.shape[0]:
        out = sae.loss(mine)
        part = out.total * (mine.shape[0] / n)
        part.backward()
        loss = part.detach()
        if out.fired is not None:
            fired += out.fired.double()
        else:
            fired += (sae.encode(mine) > 0).any(0).double()
    grads = []
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    # One message a step: every gradient, the loss and the fired counts (a few per rank, exact in
    # any float dtype) travel together in the gradients' dtype.
    loss, fired = loss.to(grads[0].dtype).reshape(1), fired.to(grads[0].dtype)
    dist.all_sum_many_([*grads, loss, fired])
    return loss[0], fired > 0


def _save_checkpoint(ckpt: StateFile, sae: SAE, opt, step: int, since: torch.Tensor) -> None:
    if ckpt.path is None:
        return
    state = dict(
        sae={k: v.detach().cpu() for k, v in sae.state_dict().items()},
        optimizer=opt.state_dict(),
        step=step,
        tokens_since_fired=since.cpu(),
    )
    ckpt.save(state)


def activation_scale(batches, d_in: int, n_batches: int = 8) -> float:
    """s with E|s x|^2 = d_in over the first `n_batches` batches (SAELens' normalisation)."""
    sq, n = 0.0, 0
    for i, x in enumerate(batches):
        sq += x.double().pow(2).sum().item()
        n += x.shape[0]
        if i + 1 >= n_batches:
            break
    if n == 0 or sq == 0:
        raise InvalidArgumentError("activation_scale: no (non-zero) activations")
    return (d_in * n / sq) ** 0.5


def unfold_scale(sae: SAE, scale: float) -> SAE:
    """An SAE trained on s * x, rewritten to act on x itself (features unchanged, x_hat in x's units):
    W_enc <- s W_enc, W_dec <- W_dec / s, b_dec <- b_dec / s."""
    with torch.no_grad():
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
    return sae


def train_family(
    make_batches: Callable[[int, int], Iterable[torch.Tensor]],
    d_in: int,
    widths: list[int],
    out_dir,
    *,
    n_steps: int | Callable[[int], int],
    l1_coefficient: float,
    lr: float = 1e-3,
    hook_name: str | None = None,
    name_prefix: str = "sae",
    normalize: bool = True,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    parallel: str = "batch",
    lr_decay: float = 0.2,
    watch: Mapping[float, Callable[[int, SAE], None]] | None = None,
    data: Mapping | None = None,
    restart: bool = False,
) -> list[SAE]:
    """Train one relu SAE per width on the same activations and save each in the SAELens layout
    under out_dir/<name_prefix>-<width>, with its recipe (steps, L1, lr, schedule, seeds) in
    TRAIN_RECORD beside it. A width whose directory already exists is loaded, not retrained, if
    its record names this recipe (InvalidArgumentError if it names another: a re-run with a new
    recipe must not report old SAEs as new ones; a directory without a record is loaded as it
    is, with a warning); a width interrupted mid-training resumes from its checkpoint
    (out_dir/.<name>.train.pt).
    make_batches(seed, steps) must return a fresh iterable of `steps` [n, d_in] batches; each SAE
    takes n_steps of them (an int, or a function of the width: wider SAEs need longer).
    With `normalize`, training sees s * x with E|s x|^2 = d_in
    and the saved SAE is rewritten to act on raw x (see unfold_scale). progress(width, step, loss).
    Across ranks (stitchkit.dist), parallel="batch" trains each width data-parallel over all ranks
    (rank 0 saves it); parallel="widths" gives width i to rank i % world, which trains it alone
    and saves it. Either way every rank returns the whole family, read back from out_dir (so
    out_dir must be on a filesystem every rank sees).
    lr_decay: as train_sae's. watch {fraction: fn}: fn(width, sae) after that fraction of
    each width's steps, the SAE in eval mode and in raw units (a copy, its scale unfolded).
    The recipe names the data too: `data` (a JSON-able identity, e.g. ActivationStore.identity())
    and a digest of each width's first batch (so another store, batch size or seed differs).
    `out_dir` must be new, empty or a family directory stitchkit made (stitchkit.atomic);
    `restart` first removes this family's own SAEs and checkpoints there, nothing else.
    """
    if parallel not in ("batch", "widths"):
        raise InvalidArgumentError(f"train_family: parallel must be 'batch' or 'widths', got {parallel!r}")
    out = Path(out_dir)
    claim_dir(out, "family", fn="train", resume=True)
    if restart and writes():
        for width in widths:
            remove_sae_dir(out / f"{name_prefix}-{width}")
            (out / f".{name_prefix}-{width}.train.pt").unlink(missing_ok=True)
    dist.barrier()
    scale = activation_scale(make_batches(seed, 8), d_in) if normalize else 1.0
    family = []
    for i, width in enumerate(widths):
        name = f"{name_prefix}-{width}"
        path = out / name
        steps = n_steps(width) if callable(n_steps) else n_steps
        # The width's own stream, its first batch peeked: it names the data in the recipe and is
        # then the first training batch (one stream a width, not a second one for the digest).
        stream, first = _peek(make_batches(seed + width, steps))
        if first is None:
            raise InvalidArgumentError(f"train_family: make_batches gave no batch for width {width}")
        recipe = dict(d_in=d_in, d_sae=width, n_steps=steps, l1_coefficient=l1_coefficient, lr=lr,
                      lr_decay=lr_decay, seed=seed * 1000 + width, data_seed=seed + width,
                      normalize=normalize, hook_name=hook_name, batch_size=int(first.shape[0]),
                      data=dict(data) if data is not None else None,
                      first_batch=batch_digest(first))  # fmt: skip
        if dist.broadcast((path / "cfg.json").exists()):  # rank 0's view decides for every rank
            _check_record(path, recipe)
            family.append(path)
            continue
        by_width = parallel == "widths" and dist.world() > 1
        if by_width and not dist.mine(i):
            family.append(path)
            continue
        batches = (x * scale for x in stream)
        # A width of its own a rank trains and writes alone; otherwise every rank trains it and
        # calls save_sae (rank 0 writes, the others wait for it).
        with dist.alone() if by_width else contextlib.nullcontext():
            sae = train_sae(
                batches,
                d_in,
                width,
                l1_coefficient=l1_coefficient,
                lr=lr,
                seed=seed * 1000 + width,
                name=name,
                hook_name=hook_name,
                n_steps=steps,
                lr_decay=lr_decay,
                checkpoint=out / f".{name}.train.pt",
                progress=None if progress is None else (lambda step, loss, w=width: progress(w, step, loss)),
                watch=_raw_watch(watch, width, steps, scale),
            )
            save_sae(unfold_scale(sae, scale).cpu(), path)
            atomic_write_json(dict(recipe, written_by="stitchkit"), path / TRAIN_RECORD)
            if writes():
                (out / f".{name}.train.pt").unlink(missing_ok=True)
        family.append(path)
    dist.barrier()  # every SAE written before any rank reads them back
    return [load_sae(p) for p in family]


def _check_record(path: Path, recipe: dict) -> None:
    """An SAE directory train_family found: refuse it if its record names another recipe."""
    record = path / TRAIN_RECORD
    found = decided(lambda: read_json(record, "the SAE's training record") if record.exists() else None)
    if found is None:
        warnings.warn(f"train_family: {path} has no {TRAIN_RECORD}; loaded as it is", stacklevel=3)
        return
    if not isinstance(found, dict):
        raise CorruptFileError(f"{record}: expected a JSON object (the SAE's training record)")
    found = {k: v for k, v in found.items() if k != "written_by"}
    if found != recipe:
        raise RunMismatchError(
            f"train: {path} was trained with another recipe or data: {differences(found, recipe)}; "
            + RESTART_HINT
        )


def _raw_watch(watch, width: int, steps: int, scale: float) -> dict | None:
    """train_family's watch as train_sae's: at round(fraction * steps), fn(width, raw-units copy)."""
    if not watch:
        return None
    return {
        max(1, round(f * steps)): (lambda sae, fn=fn: fn(width, unfold_scale(copy.deepcopy(sae), scale)))
        for f, fn in watch.items()
    }
