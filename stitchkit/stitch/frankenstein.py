"""Frankenstein assembly: grow one SAE from a family of widths, stage by stage.

Start from the smallest SAE. For each larger SAE in turn, add its features that are novel against
the current model (stitch.rules.is_novel: max decoder cosine <= threshold; the reference work
writes "< 0.7" here, see stitch.rules), each keeping its activation and provenance, then retrain
the decoder with the encoder frozen (fit.retrain). Every stage is measured, and so is the family's
original SAE nearest in size, as a yardstick.

Assembling (`assemble`: needs the retraining stream only) is apart from measuring
(`FrankensteinMeasure`: accumulators over the evaluation tokens), so a study measures every stage
in its one pass. With `checkpoint_dir` (fit.checkpoint.RunDir), each finished stage is saved there
and a retraining in progress checkpoints its optimiser; a re-run with the same arguments loads the
finished stages and resumes the unfinished one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..data.streams import ActsLike, as_activations
from ..errors import InvalidArgumentError
from ..fit.checkpoint import RunDir, batch_digest, fingerprint
from ..fit.retrain import METHODS, retrain_decoder
from ..measure.accumulator import run_pass
from ..measure.metrics import Metrics, MetricsAccumulator
from ..progress import Ticker, batches_in
from ..sae.io import load_sae
from ..sae.model import SAE, family_order
from .rules import DEFAULT_THRESHOLD, check_threshold, is_novel
from .similarity import max_cosine

# Bumped when what a checkpoint directory holds changes (2: stage rows hold the assembly, not
# metrics; 3: the signature names the data).
CHECKPOINT_SCHEME = 3


@dataclass
class Stage:
    """One stage. source: the SAE whose features were added (n_added of them, of source_width);
    n_features, mse, normalized_mse, l0: the stitched model after retraining (mse_before: before);
    reference*: the original family SAE nearest in size, on the same tokens. Units: stitchkit.sae."""

    stage: int
    source: str
    source_width: int
    n_added: int
    n_features: int
    mse_before: float
    mse: float
    normalized_mse: float
    l0: float
    retrain_seconds: float
    reference: str
    reference_width: int
    reference_mse: float
    reference_normalized_mse: float
    reference_l0: float


@dataclass
class Assembled:
    """One assembled stage, not yet measured: `before` is the model with the source's novel
    features `added` (int64 source indices) appended, `model` the same after retraining."""

    stage: int
    source: SAE
    added: torch.Tensor
    before: SAE
    model: SAE
    retrain_seconds: float


@dataclass
class FrankensteinResult:
    sae: SAE
    stages: list[Stage]


def nearest_member(family: Sequence[SAE], width: int) -> SAE:
    """The family SAE nearest `width` in log size (the wider one on a tie)."""
    return min(family, key=lambda s: (abs(math.log(s.d_sae / width)), -s.d_sae))


def _grow(current: SAE, source: SAE, added: torch.Tensor, i: int) -> SAE:
    if not len(added):
        return current.select(torch.arange(current.d_sae), name=f"frankenstein@{i}")
    return SAE.from_features(
        [(current, torch.arange(current.d_sae)), (source, added)], base=current, name=f"frankenstein@{i}"
    )


def assemble(
    family: Sequence[SAE],
    acts: ActsLike,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    retrain: str | None = "adam",
    epochs: int = 1,
    lr: float = 1e-3,
    checkpoint_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
    data: dict | None = None,
    restart: bool = False,
) -> list[Assembled]:
    """Every stage of the assembly (stage 0 is the smallest SAE itself), retrained on `acts`
    (several passes: a tensor, list or callable). No token is measured here.
    checkpoint_dir's run is named by the family's weights, the recipe, `data` (a JSON-able
    identity of acts, e.g. ActivationStore.identity()) and a digest of acts' first batch: another
    run's stages are refused (RunMismatchError), or removed first with `restart`."""
    threshold = check_threshold(threshold, "frankenstein")
    if retrain is not None and retrain not in METHODS:
        raise InvalidArgumentError(f"frankenstein: retrain must be one of {METHODS} or None, got {retrain!r}")
    ordered = family_order(family)
    n_batches = batches_in(acts)
    acts = as_activations(acts, multi_pass=True, what="frankenstein: acts")
    say = progress or (lambda message: None)
    run = None
    if checkpoint_dir is not None:
        first = next(iter(acts.batches(ordered[0].d_in, ordered[0].device)), None)
        signature = dict(
            scheme=CHECKPOINT_SCHEME,
            family=[[s.name, s.d_sae, fingerprint(s)] for s in ordered],
            threshold=threshold,
            retrain=retrain,
            epochs=epochs,
            lr=lr,
            data=data,
            first_batch=None if first is None else batch_digest(first),
        )
        if restart:
            RunDir.discard(checkpoint_dir)
        run = RunDir(checkpoint_dir, signature, "frankenstein")
    first = ordered[0]
    current = first.select(torch.arange(first.d_sae), name="frankenstein@0")
    stages = [Assembled(0, first, torch.arange(first.d_sae), first, current, 0.0)]
    for i, source in enumerate(ordered[1:], start=1):
        done = run.finished(i) if run is not None else None
        if done is not None:
            added = torch.tensor(done["added"], dtype=torch.int64)
            before = _grow(current, source, added, i)
            current = load_sae(run.stage(i)[0], name=f"frankenstein@{i}", device=first.device)
            stages.append(Assembled(i, source, added, before, current, done["retrain_seconds"]))
            say(f"stage {i}: loaded from {run.path}")
            continue
        say(f"stage {i}: comparing {source.name} ({source.d_sae}) with the model ({current.d_sae})")
        mc = max_cosine(source, current, backend=backend).values
        added = is_novel(mc, threshold).nonzero().flatten().cpu()
        before = _grow(current, source, added, i)
        model, secs = before, 0.0
        if retrain is not None and len(added):
            say(f"stage {i}: retraining the decoder of {before.d_sae} features ({retrain})")
            work = run.work_file(i) if run is not None else None
            unit = "steps" if retrain == "adam" else "batches or CG iterations"
            total = n_batches * epochs if retrain == "adam" and n_batches else None
            tick = Ticker(say, f"stage {i}: retraining", total, unit)
            res = retrain_decoder(before, acts, method=retrain, epochs=epochs, lr=lr, checkpoint=work,
                                  progress=tick)  # fmt: skip
            model, secs = res.sae, res.seconds
        model.name = f"frankenstein@{i}"
        if run is not None:
            run.finish(i, model, dict(added=added.tolist(), retrain_seconds=secs))
        stages.append(Assembled(i, source, added, before, model, secs))
        current = model
    return stages


class FrankensteinMeasure:
    """The accumulators that measure assembled stages over the evaluation tokens: each stage's
    model before and after retraining and each stage's reference (the family SAE nearest in size),
    every distinct SAE once."""

    def __init__(
        self,
        stages: Sequence[Assembled],
        family: Sequence[SAE],
        accumulators: dict[int, MetricsAccumulator] | None = None,
    ):
        """accumulators: MetricsAccumulators by id(sae) to share (e.g. a study's family metrics);
        the ones this needs are added to it."""
        self.stages, self.family = list(stages), family_order(family)
        self.refs = [nearest_member(self.family, st.model.d_sae) for st in self.stages]
        self.accumulators = {} if accumulators is None else accumulators
        for st, ref in zip(self.stages, self.refs):
            for sae in (st.before, st.model, ref):
                self.accumulators.setdefault(id(sae), MetricsAccumulator(sae))

    def metrics(self, sae: SAE) -> Metrics:
        return self.accumulators[id(sae)].result()

    def result(self) -> FrankensteinResult:
        rows = []
        for st, ref in zip(self.stages, self.refs):
            m, rm = self.metrics(st.model), self.metrics(ref)
            rows.append(
                Stage(
                    st.stage,
                    st.source.name,
                    st.source.d_sae,
                    len(st.added),
                    st.model.d_sae,
                    self.metrics(st.before).mse,
                    m.mse,
                    m.normalized_mse,
                    m.l0,
                    st.retrain_seconds,
                    ref.name,
                    ref.d_sae,
                    rm.mse,
                    rm.normalized_mse,
                    rm.l0,
                )
            )
        return FrankensteinResult(self.stages[-1].model, rows)


def frankenstein(
    family: Sequence[SAE],
    acts: ActsLike,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    retrain: str | None = "adam",
    epochs: int = 1,
    lr: float = 1e-3,
    eval_acts: ActsLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
    data: dict | None = None,
    restart: bool = False,
) -> FrankensteinResult:
    """Assemble a Frankenstein SAE from `family` (any order; sorted by width here).

    acts: the retraining stream (several passes: a tensor, list or callable); eval_acts: the
    tokens every stage and reference is measured on, in one pass (default: acts). retrain:
    "adam", "lstsq" or None. Returns the final SAE (provenance: each feature's source SAE and
    index) and one Stage per family member (stage 0 is the smallest SAE itself).
    `progress(message)` at each stage boundary. checkpoint_dir, data, restart: see assemble.
    """
    stream = as_activations(acts, multi_pass=True, what="frankenstein: acts")
    stages = assemble(
        family,
        stream,
        threshold,
        retrain=retrain,
        epochs=epochs,
        lr=lr,
        checkpoint_dir=checkpoint_dir,
        backend=backend,
        progress=progress,
        data=data,
        restart=restart,
    )
    held = stream if eval_acts is None else as_activations(eval_acts, what="frankenstein: eval_acts")
    fm = FrankensteinMeasure(stages, family)
    first = stages[0].model
    run_pass(list(fm.accumulators.values()), held, d_in=first.d_in, device=first.device)
    return fm.result()
