"""Frankenstein assembly: grow one SAE from a family of widths, stage by stage.

Start from the smallest SAE. For each larger SAE in turn, add its features whose max decoder
cosine against the current model is < threshold (each keeps its activation and provenance),
then retrain the decoder with the encoder frozen (stitchkit.retrain). Every stage is measured,
and so is the family's original SAE nearest in size, as a yardstick.

With `checkpoint_dir`, each finished stage is saved there (an SAE directory in the SAELens
layout plus its metrics as JSON, both written atomically) and a retraining in progress
checkpoints its optimiser; a re-run with the same arguments loads the finished stages and
resumes the unfinished one, so an interrupted run loses no finished stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .activations import ActsLike, as_activations
from .errors import InvalidArgumentError
from .evaluate import Metrics, evaluate
from .io import atomic_write_json, load_sae, save_sae
from .retrain import METHODS, retrain_decoder
from .sae import SAE
from .similarity import max_cosine
from .stitch import check_threshold, family_order


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
class FrankensteinResult:
    sae: SAE
    stages: list[Stage]


def _nearest(family: Sequence[SAE], width: int) -> SAE:
    return min(family, key=lambda s: (abs(math.log(s.d_sae / width)), -s.d_sae))


def frankenstein(
    family: Sequence[SAE],
    acts: ActsLike,
    threshold: float = 0.7,
    *,
    retrain: str | None = "adam",
    epochs: int = 1,
    lr: float = 1e-3,
    eval_acts: ActsLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> FrankensteinResult:
    """Assemble a Frankenstein SAE from `family` (any order; sorted by width here).

    acts: the retraining stream (several passes: a tensor, list or callable); eval_acts: the
    tokens every stage and reference is measured on (default: acts). retrain: "adam", "lstsq"
    or None. Returns the final SAE (provenance: each feature's source SAE and index) and one
    Stage per family member (stage 0 is the smallest SAE itself). `progress(message)` at each
    stage boundary.
    """
    threshold = check_threshold(threshold, "frankenstein")
    if retrain is not None and retrain not in METHODS:
        raise InvalidArgumentError(f"frankenstein: retrain must be one of {METHODS} or None, got {retrain!r}")
    ordered = family_order(family)
    acts = as_activations(acts, multi_pass=True, what="frankenstein: acts")
    eval_acts = (
        acts
        if eval_acts is None
        else as_activations(eval_acts, multi_pass=True, what="frankenstein: eval_acts")
    )
    say = progress or (lambda message: None)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = dict(
        family=[[s.name, s.d_sae, _fingerprint(s)] for s in ordered],
        threshold=threshold,
        retrain=retrain,
        epochs=epochs,
        lr=lr,
    )
    if ckdir is not None:
        _check_run(ckdir, run)

    ref_cache: dict[str, Metrics] = {}

    def ref_metrics(sae: SAE) -> Metrics:
        if sae.name not in ref_cache:
            ref_cache[sae.name] = evaluate(sae, eval_acts)
        return ref_cache[sae.name]

    def stage_row(i: int, source: SAE, n_added: int, model: SAE, before: float, secs: float) -> Stage:
        m = evaluate(model, eval_acts)
        ref = _nearest(ordered, model.d_sae)
        rm = ref_metrics(ref)
        return Stage(
            i,
            source.name,
            source.d_sae,
            n_added,
            model.d_sae,
            before,
            m.mse,
            m.normalized_mse,
            m.l0,
            secs,
            ref.name,
            ref.d_sae,
            rm.mse,
            rm.normalized_mse,
            rm.l0,
        )

    stages: list[Stage] = []
    current = ordered[0].select(torch.arange(ordered[0].d_sae), name="frankenstein@0")
    for i, source in enumerate(ordered):
        done = _load_stage(ckdir, i, ordered[0].device) if ckdir is not None else None
        if done is not None:
            current, row = done
            stages.append(row)
            say(f"stage {i}: loaded from {ckdir}")
            continue
        if i == 0:
            row = stage_row(0, source, source.d_sae, current, ref_metrics(source).mse, 0.0)
        else:
            say(f"stage {i}: comparing {source.name} ({source.d_sae}) with the model ({current.d_sae})")
            mc = max_cosine(source, current, backend=backend).values
            add = (mc < threshold).nonzero().flatten()
            if len(add):
                current = SAE.from_features(
                    [(current, torch.arange(current.d_sae)), (source, add)],
                    base=current,
                    name=f"frankenstein@{i}",
                )
            before = evaluate(current, eval_acts).mse
            secs = 0.0
            if retrain is not None and len(add):
                say(f"stage {i}: retraining the decoder of {current.d_sae} features ({retrain})")
                ck = ckdir / f"stage_{i:02d}.retrain.pt" if ckdir is not None else None
                res = retrain_decoder(current, acts, method=retrain, epochs=epochs, lr=lr, checkpoint=ck)
                current, secs = res.sae, res.seconds
            current.name = f"frankenstein@{i}"
            row = stage_row(i, source, len(add), current, before, secs)
        if ckdir is not None:
            save_sae(current, ckdir / f"stage_{i:02d}")
            atomic_write_json(asdict(row), ckdir / f"stage_{i:02d}.json")
            (ckdir / f"stage_{i:02d}.retrain.pt").unlink(missing_ok=True)
        stages.append(row)
    return FrankensteinResult(current, stages)


def _fingerprint(sae: SAE) -> str:
    """A digest of the SAE's weights, so a checkpoint is never reused for a retrained family."""
    h = hashlib.sha1()
    for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_run(ckdir: Path, run: dict) -> None:
    path = ckdir / "run.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != run:
            raise InvalidArgumentError(
                f"frankenstein: checkpoint_dir {ckdir} holds another run ({found}); expected {run}. "
                "Use another directory or delete it"
            )
    else:
        atomic_write_json(run, path)


def _load_stage(ckdir: Path, i: int, device: torch.device) -> tuple[SAE, Stage] | None:
    meta, sae_dir = ckdir / f"stage_{i:02d}.json", ckdir / f"stage_{i:02d}"
    if not (meta.exists() and sae_dir.exists()):
        return None
    sae = load_sae(sae_dir, name=f"frankenstein@{i}", device=device)
    return sae, Stage(**json.loads(meta.read_text()))
