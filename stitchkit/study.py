"""The stitching study as a library call: `run_study(family, held, train_acts) -> StudyResult`.

Every experiment of the reference work on one trained family: novel fractions of each adjacent
pair; for one (small, large) pair the 2x2 insertion table, active/inactive MSE, insertion curves,
the interpolation path, swaps, greedy selection and activation similarity; then the Frankenstein
assembly and a least-squares refit of its decoder. Pure: nothing is printed or written (the CLI and
report render the result); `progress(message)` reports the long steps.

Order of work: everything that needs no held-out token is built first (classifications, swap
groups, paths, the stitched SAEs, the Frankenstein stages retrained on `train_acts`, the refit);
then the held-out tokens are streamed ONCE through every measurement's accumulator
(measure.accumulator.run_pass), each SAE's forward computed once per batch for all of them.
The one exception: activation similarity whose co-activation matrix exceeds the memory budget
takes its own passes, one per block of features (never at demo sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .data.streams import ActsLike, as_activations
from .errors import InvalidArgumentError
from .fit.retrain import retrain_decoder
from .measure.accumulator import run_pass
from .measure.active_inactive import ActiveInactiveAccumulator
from .measure.coactivation import CoactivationAccumulator, activation_similarity, query_block
from .measure.gram import GramAccumulator
from .measure.insertion import InsertionAccumulator
from .measure.metrics import Metrics, MetricsAccumulator
from .measure.paths import PathAccumulator, PathMetrics
from .measure.swaps import SwapAccumulator
from .ops.max_cosine import MaxCosine
from .sae.model import SAE, family_order
from .stitch.classify import (
    Agreement,
    Classification,
    DeltaTable,
    classify,
    delta_table,
    similarity_agreement,
)
from .stitch.frankenstein import FrankensteinMeasure, FrankensteinResult, assemble
from .stitch.interpolate import insert, insertion_steps, interpolation_path
from .stitch.rules import DEFAULT_THRESHOLD, check_threshold
from .stitch.selection import Selection, candidate_max_cos, select_from_gram
from .stitch.swaps import SwapGroup, swap, swap_groups


@dataclass
class StudyConfig:
    """threshold: the novelty threshold (stitch.rules). small, large: indices into the family
    sorted by width. curve_points: points on each insertion curve (None: every feature).
    greedy_novel_only: greedy selection among the novel features only (else all large features).
    retrain_lr: the Frankenstein stages' Adam learning rate (one epoch over train_acts)."""

    threshold: float = DEFAULT_THRESHOLD
    small: int = 0
    large: int = -1
    curve_points: int | None = 20
    greedy_novel_only: bool = False
    retrain_lr: float = 1e-3

    def check(self, n_family: int) -> None:
        check_threshold(self.threshold, "study")
        for key in ("small", "large"):
            i = getattr(self, key)
            if isinstance(i, bool) or not isinstance(i, int) or not -n_family <= i < n_family:
                raise InvalidArgumentError(
                    f"study: {key} must index the {n_family} SAEs of the family, got {i!r}"
                )
        if self.curve_points is not None and self.curve_points < 1:
            raise InvalidArgumentError(f"study: curve_points must be >= 1, got {self.curve_points}")
        if not self.retrain_lr > 0:
            raise InvalidArgumentError(f"study: retrain_lr must be > 0, got {self.retrain_lr}")


@dataclass
class PairNovelty:
    """One adjacent pair of the family: the large SAE's novel features against the small one."""

    pair: str
    novel: int
    novel_fraction: float
    median_max_cos: float


@dataclass
class SwapEffect:
    """Each swap group applied alone to the small SAE: dMSE and dL0 float64 [G]; `best` the group
    that lowers L0 most, and the metrics of the small SAE with it applied (from the deltas)."""

    delta_mse: torch.Tensor
    delta_l0: torch.Tensor
    best: int | None
    best_mse: float | None
    best_l0: float | None


@dataclass
class StudyResult:
    """Everything the study measured; `to_dict()` is results.json's content (units: stitchkit.sae).

    family: each SAE's Metrics on the held-out tokens (sorted by width, as `saes`).
    classification, delta_mse: the (small, large) pair's classes and per-feature insertion dMSE.
    active_inactive: ActiveInactiveMSE.summary() over the novel features (None without any).
    curves: insertion curves per class (features in increasing max cos). interpolation: the path
    and its labels. swaps: swap groups and their effects. plus_novel, swapped, frankenstein: the
    stitched SAEs (provenance per feature) for the caller to save. n_passes: passes made over the
    held-out tokens.
    """

    config: StudyConfig
    saes: list[SAE]
    family: list[Metrics]
    train_seconds: dict[int, float]
    pairs: list[PairNovelty]
    small: SAE
    large: SAE
    classification: Classification
    delta_mse: torch.Tensor
    table: DeltaTable
    active_inactive: dict | None
    curves: dict[str, PathMetrics]
    interpolation: PathMetrics
    interpolation_labels: list[str]
    groups: list[SwapGroup]
    swaps: SwapEffect
    plus_novel: SAE
    plus_novel_metrics: Metrics
    swapped: SAE | None
    selection: Selection
    activation: MaxCosine
    agreement: Agreement
    frankenstein: FrankensteinResult
    refit: dict | None
    n_passes: int
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def large_metrics(self) -> Metrics:
        return self.family[self.saes.index(self.large)]

    def family_rows(self) -> list[dict]:
        return [
            dict(
                width=sae.d_sae,
                mse=m.mse,
                normalized_mse=m.normalized_mse,
                l0=m.l0,
                dead_fraction=m.dead_fraction,
                train_s=self.train_seconds.get(sae.d_sae, 0.0),
                name=sae.name,
            )
            for sae, m in zip(self.saes, self.family)
        ]

    def interpolation_rows(self) -> list[dict]:
        return [dict(r, label=lab) for r, lab in zip(self.interpolation.rows(), self.interpolation_labels)]

    def to_dict(self, setup: dict | None = None, path_rows: int = 12) -> dict:
        """The results.json content (key order as the report reads it). path_rows: how many
        interpolation rows `interpolation_shown` keeps (the first two, evenly spaced, the last)."""
        c, t = self.classification, self.config.threshold
        res: dict = {}
        if setup is not None:
            res["setup"] = setup
        res["family"] = self.family_rows()
        res["pairs"] = [asdict(p) for p in self.pairs]
        res["delta_table"] = self.table.rows()
        res["scatter"] = dict(
            max_cos=c.max_cos.tolist(),
            delta_mse=self.delta_mse.tolist(),
            novel=c.novel.tolist(),
            threshold=t,
            title=f"{self.large.name} features inserted into {self.small.name}",
        )
        if self.active_inactive is not None:
            ai = self.active_inactive
            res["active_inactive"] = [
                dict(
                    what="tokens where the novel feature fires",
                    small=ai["small_active"],
                    large=ai["large_active"],
                    gap=ai["gap_active"],
                ),
                dict(
                    what="other tokens",
                    small=ai["small_inactive"],
                    large=ai["large_inactive"],
                    gap=ai["gap_inactive"],
                ),
            ]
        res["insertion_curves"] = {
            cls: dict(k=[int(n) - self.small.d_sae for n in cv.n_features], mse=cv.mse.tolist())
            for cls, cv in self.curves.items()
        }
        if self.notes:
            res["notes"] = dict(self.notes)
        res["interpolation"] = self.interpolation_rows()
        lm = self.large_metrics
        shown = pick_rows(res["interpolation"], path_rows)
        shown.append(
            dict(
                step="-",
                label=f"{self.large.name} itself",
                n_features=self.large.d_sae,
                mse=lm.mse,
                normalized_mse=lm.normalized_mse,
                l0=lm.l0,
            )
        )
        res["interpolation_shown"] = shown
        sel = self.selection
        k = min(len(sel.greedy), len(sel.cosine))
        if k:
            at = sel.at(k)
            res["selection"] = [dict(n=at["n"], greedy=at["greedy"], cosine=at["cosine"], base=sel.base_mse)]
        res["agreement"] = vars(self.agreement)
        res["frankenstein"] = [vars(st) for st in self.frankenstein.stages]
        if self.refit is not None:
            last = self.frankenstein.stages[-1]
            res["refit"] = [
                dict(method="least squares", mse=self.refit["mse"], seconds=self.refit["seconds"]),
                dict(method="Adam (1 epoch)", mse=last.mse, seconds=last.retrain_seconds),
            ]
        return res


def pick_rows(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` rows: the first two, evenly spaced middle ones, and the last."""
    if len(rows) <= limit:
        return list(rows)
    keep = sorted({0, 1} | {round(i * (len(rows) - 1) / (limit - 2)) for i in range(limit - 1)})
    return [rows[i] for i in keep]


class _Counted:
    """The held-out stream, counting the passes made over it."""

    def __init__(self, acts: ActsLike):
        self.acts = as_activations(acts, multi_pass=True, what="study: held")
        self.passes = 0

    def __call__(self):
        self.passes += 1
        return iter(self.acts)


def run_study(
    family: Sequence[SAE],
    held: ActsLike,
    train_acts: ActsLike,
    config: StudyConfig | None = None,
    *,
    train_seconds: dict[int, float] | None = None,
    checkpoint_dir=None,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run the whole study (see the module doc) on `family` (any order; sorted by width).

    held: the held-out tokens every measurement uses (streamed once; a tensor, list or callable);
    train_acts: the retraining stream of the Frankenstein stages and the refit (several passes).
    train_seconds: each width's training time, carried into the family rows. checkpoint_dir:
    where the Frankenstein assembly checkpoints (resumed when it exists).
    """
    config = config or StudyConfig()
    saes = family_order(family)
    config.check(len(saes))
    say = progress or (lambda message: None)
    t = config.threshold
    small, large = saes[config.small], saes[config.large]
    if small.d_sae >= large.d_sae:
        raise InvalidArgumentError(
            f"study: the small SAE {small.name!r} ({small.d_sae}) must be narrower than the large "
            f"SAE {large.name!r} ({large.d_sae})"
        )

    # 1. Decoder geometry and plans: no held-out tokens.
    pairs = []
    for a, b in zip(saes, saes[1:]):
        ca = classify(a, b, t)
        pairs.append(
            PairNovelty(
                f"{b.d_sae} vs {a.d_sae}",
                int(ca.novel.sum()),
                float(ca.novel.float().mean()),
                float(ca.max_cos.median()),
            )
        )
    c = classify(small, large, t)
    groups = swap_groups(small, large, t)
    steps, labels = interpolation_path(c, groups)
    plus_novel = insert(small, large, c.novel_features, name=f"{small.name}+novel")
    cand = c.novel_features if config.greedy_novel_only else torch.arange(large.d_sae)
    cand_cos = candidate_max_cos(small, large, cand)

    say("frankenstein: assembling (decoder retrained with Adam, encoder frozen)")
    stages = assemble(
        saes, train_acts, t, retrain="adam", lr=config.retrain_lr, checkpoint_dir=checkpoint_dir, progress=say
    )
    refit_sae = refit_seconds = None
    if stages[-1].added.numel():
        say("frankenstein: least-squares refit of the final decoder")
        ls = retrain_decoder(stages[-1].model, train_acts, method="lstsq")
        refit_sae, refit_seconds = ls.sae, ls.seconds

    # 2. One pass over the held-out tokens through every accumulator.
    fam = {id(s): MetricsAccumulator(s) for s in saes}
    fm = FrankensteinMeasure(stages, saes, accumulators=fam)
    accs: dict[str, object] = dict(
        insertion=InsertionAccumulator(small, large),
        interpolation=PathAccumulator(small, large, steps),
        swaps=SwapAccumulator(small, large, [(g.children, g.parents) for g in groups]),
        plus_novel=MetricsAccumulator(plus_novel),
        gram=GramAccumulator(small, large, cand),
    )
    if len(c.novel_features):
        accs["active_inactive"] = ActiveInactiveAccumulator(small, large, c.novel_features)
    curve_accs = {}
    for cls, feats in (("novel", c.novel_features), ("reconstruction", c.reconstruction_features)):
        if len(feats):
            order = feats[torch.argsort(c.max_cos[feats], stable=True)]
            curve_accs[cls] = PathAccumulator(
                small, large, insertion_steps(large, order, config.curve_points)
            )
    coact_fits = large.d_sae <= query_block(large, small)
    if coact_fits:
        accs["activation"] = CoactivationAccumulator(large, small)
    if refit_sae is not None:
        accs["refit"] = MetricsAccumulator(refit_sae)
    every = list(fm.accumulators.values()) + list(accs.values()) + list(curve_accs.values())
    stream = _Counted(held)
    say("measuring every experiment in one pass over the held-out tokens")
    run_pass(every, stream, d_in=small.d_in, device=small.device, what="study: held")
    activation = accs["activation"].result() if coact_fits else activation_similarity(large, small, stream)

    # 3. Results.
    family_metrics = [fam[id(s)].result() for s in saes]
    dmse = accs["insertion"].result()
    sd, sl = accs["swaps"].result()
    small_m = fam[id(small)].result()
    notes = {}
    best = swapped = best_mse = best_l0 = None
    if groups:
        notes["interpolation_shown"] = (
            f"{len(groups)} swap groups; applied alone, dMSE > 0 for {int((sd > 0).sum())} and "
            f"dL0 < 0 for {int((sl < 0).sum())} of them (mean dMSE {float(sd.mean()):+.4g}, "
            f"mean dL0 {float(sl.mean()):+.4g})."
        )
        best = int(torch.argmin(sl))
        swapped = swap(small, large, groups[best], name=f"{small.name}~swap")
        best_mse, best_l0 = small_m.mse + float(sd[best]), small_m.l0 + float(sl[best])
    agreement = similarity_agreement(c, activation)
    notes["selection"] = (
        f"Activation similarity vs decoder cosine: same nearest small feature for "
        f"{agreement.same_nearest:.0%} of reconstruction features, same class for "
        f"{agreement.class_agreement:.0%}, Spearman {agreement.spearman:.2f} "
        f"({agreement.n_live} live features)."
    )
    fr = fm.result()
    fr.sae.name = "frankenstein"
    refit = None
    if refit_sae is not None:
        refit = dict(mse=accs["refit"].result().mse, seconds=refit_seconds)
    return StudyResult(
        config=config,
        saes=saes,
        family=family_metrics,
        train_seconds=dict(train_seconds or {}),
        pairs=pairs,
        small=small,
        large=large,
        classification=c,
        delta_mse=dmse,
        table=delta_table(c, dmse),
        active_inactive=accs["active_inactive"].result().summary() if "active_inactive" in accs else None,
        curves={cls: a.result() for cls, a in curve_accs.items()},
        interpolation=accs["interpolation"].result(),
        interpolation_labels=labels,
        groups=groups,
        swaps=SwapEffect(sd, sl, best, best_mse, best_l0),
        plus_novel=plus_novel,
        plus_novel_metrics=accs["plus_novel"].result(),
        swapped=swapped,
        selection=select_from_gram(accs["gram"].result(), cand_cos, t),
        activation=activation,
        agreement=agreement,
        frankenstein=fr,
        refit=refit,
        n_passes=stream.passes,
        notes=notes,
    )
