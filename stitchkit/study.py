"""The stitching study as a library call: `run_study(family, held, train_acts) -> StudyResult`.

Every experiment of the reference work on one trained family, and the answers to its named limits:
- every adjacent pair (and the headline pair, and a same-width other-seed SAE when given: the seed
  baseline): novel fraction, the 2x2 insertion table, the small SAE with all novel features, the
  swaps' dMSE/dL0, the interpolation path's end points, and the calibration of decoder cosine and
  of activation similarity as predictors of "inserting this feature alone lowers MSE";
- for the headline (small, large) pair: active/inactive MSE, insertion curves, the whole
  interpolation path, greedy selection, activation similarity, and the MSE-L0 frontier of stitched
  SAEs against the natural family's (stitch.frontier);
- the lineage graph across the whole width ladder (stitch.lineage);
- the Frankenstein assembly and a least-squares refit of its decoder.
Pure: nothing is written (the CLI and report render the result); `progress(message)` reports the
long steps, and by default ("auto") a terminal's stderr shows them.

Order of work: everything that needs no held-out token is built first (classifications, swap
groups, paths, the stitched SAEs, the Frankenstein stages retrained on `train_acts`, the refit, the
frontier's SAEs chosen and refit on `train_acts`' normal equations); then the held-out tokens are
streamed ONCE through every measurement's accumulator
(measure.accumulator.run_pass), each SAE's forward computed once per batch for all of them.
The one exception: activation similarity whose co-activation matrix exceeds the memory budget
takes its own passes, one per block of features (never at demo sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .data.streams import ActsLike, as_activations
from .errors import InvalidArgumentError
from .fit.retrain import retrain_decoder
from .measure.accumulator import run_pass
from .measure.active_inactive import ActiveInactiveAccumulator
from .measure.coactivation import CoactivationAccumulator, activation_similarity, query_block
from .measure.gram import GramAccumulator, gram_bytes
from .measure.insertion import InsertionAccumulator
from .measure.metrics import Metrics, MetricsAccumulator
from .measure.normal import NormalEquationsAccumulator
from .measure.paths import PathAccumulator, PathMetrics
from .measure.swaps import SwapAccumulator
from .ops.dispatch import stage_memory
from .ops.max_cosine import MaxCosine
from .progress import Ticker, tokens_in
from .progress import resolve as resolve_progress
from .sae.model import SAE, family_order
from .stitch.calibration import Calibration, calibrate
from .stitch.classify import (
    Agreement,
    Classification,
    DeltaTable,
    classify,
    delta_table,
    similarity_agreement,
)
from .stitch.frankenstein import FrankensteinMeasure, FrankensteinResult, assemble
from .stitch.frontier import (
    ChangeForm,
    Frontier,
    budget_area,
    form_bytes,
    frontier_points,
    on_frontier,
    pair_moves,
)
from .stitch.interpolate import insert, insertion_steps, interpolation_path
from .stitch.lineage import Lineage, lineage
from .stitch.rules import DEFAULT_THRESHOLD, check_threshold
from .stitch.selection import Selection, candidate_max_cos, select_from_gram
from .stitch.similarity import Links
from .stitch.sparse_form import CodeColumnsAccumulator, SparseChangeForm, SparseMarginalGram
from .stitch.swaps import SwapGroup, swap, swap_groups


@dataclass
class StudyConfig:
    """threshold: the novelty threshold (stitch.rules). small, large: indices into the family
    sorted by width of the headline pair; by default the two narrowest, an adjacent pair as the
    reference work's (GPT2-768 vs 1536) and the CLI's: the narrowest against the widest would
    make the headline's quadratic stages (greedy selection, the frontier) scale with the whole
    family's width ratio. curve_points: points on each insertion curve (None: every feature).
    greedy_novel_only: greedy selection among the novel features only (else all large features).
    retrain_lr: the Frankenstein stages' Adam learning rate (one epoch over train_acts).
    lineage, frontier: build the lineage graph, the MSE-L0 frontier (each costs a little).
    refit_mse_tol, refit_max_iter: where the final decoder's least-squares refit takes CG (no
    dense solve fits), its stopping rule (fit.cg): the objective within about refit_mse_tol of its
    minimum, or refit_max_iter iterations. At the reference family's widest stage (94,781 features
    on 100,000 tokens) the least-squares problem is nearly square and CG keeps lowering the
    training MSE by more than 1e-7 an iteration after 80 iterations (16 s each on 2 CPU cores):
    the result's `algorithm` says how it stopped. cards: the top activating rows kept per feature
    for the feature cards (measure.cards.FeatureCards, in the held-out pass, for every SAE of the
    family and the final Frankenstein SAE); 0 collects no card statistics."""

    threshold: float = DEFAULT_THRESHOLD
    small: int = 0
    large: int = 1
    curve_points: int | None = 20
    greedy_novel_only: bool = False
    retrain_lr: float = 1e-3
    lineage: bool = True
    frontier: bool = True
    refit_mse_tol: float = 1e-6
    refit_max_iter: int = 50
    cards: int = 20

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
        if not self.refit_mse_tol > 0 or self.refit_max_iter < 1:
            raise InvalidArgumentError(
                f"study: refit_mse_tol must be > 0 and refit_max_iter >= 1, got {self.refit_mse_tol}, "
                f"{self.refit_max_iter}"
            )


@dataclass
class PairStudy:
    """One (small, large) pair's measurements on the held-out tokens. kind: "width" (the family's
    own pairs) or "seed" (the same width, another seed: the seed baseline). novel: features at or
    under the threshold (stitch.rules); table: the 2x2 insertion table; mse_plus_novel / l0: the
    small SAE with every novel feature inserted; swaps: how many groups, how many lower L0 and
    raise MSE applied alone, their mean dMSE and dL0; path: the interpolation's MSE at its start,
    after the novel features, at its end (the small SAE with every swap applied), and its lowest;
    calibration: per measure ("decoder", "activation") how well it predicts dMSE < 0."""

    pair: str
    kind: str
    small: str
    large: str
    n_large: int
    novel: int
    novel_fraction: float
    median_max_cos: float
    table: DeltaTable
    mse_small: float
    mse_large: float
    mse_plus_novel: float
    l0_small: float
    l0_plus_novel: float
    n_groups: int
    swaps_lower_l0: int
    swaps_raise_mse: int
    mean_swap_dmse: float
    mean_swap_dl0: float
    path_start: float
    path_after_novel: float
    path_end: float
    path_min: float
    calibration: dict[str, Calibration]

    def row(self) -> dict:
        """The flat row the tables and results.json show (calibration: AUROC and best threshold)."""
        out = {k: v for k, v in vars(self).items() if k not in ("table", "calibration")}
        out.update(vars(self.table))
        out["plus_novel_change"] = self.mse_plus_novel / self.mse_small - 1
        for m, c in self.calibration.items():
            out[f"auroc_{m}"], out[f"best_threshold_{m}"] = c.auroc, c.best_threshold
        return out


class _PairPlan:
    """A pair's plan before the held-out pass: classification, swap groups, interpolation path;
    then (build(), just before the pass, so that their decoder copies do not add to the refit's
    peak memory) the small SAE with every novel feature and the accumulators that measure them."""

    def __init__(self, small: SAE, large: SAE, t: float, kind: str, links=None, activation: bool = True):
        self.small, self.large, self.kind = small, large, kind
        self.c = classify(small, large, t)
        self.groups = swap_groups(small, large, t, links=links)
        self.steps, self.labels = interpolation_path(self.c, self.groups)
        self.activation = activation
        self.accs: dict[str, object] = {}

    def build(self, headline: bool = False) -> list:
        """Make the accumulators; returns them. The headline pair also builds its plus-novel SAE
        (the study returns it) and measures it whole; every pair's plus-novel MSE and L0 are the
        interpolation path's step 1, which is exactly that SAE (measure.paths), so the other
        pairs build no SAE of small + novel features (1.8 GiB of decoders and encoders, and
        their screen forms, at 768..98,304)."""
        small, large = self.small, self.large
        self.accs = dict(
            insertion=InsertionAccumulator(small, large),
            interpolation=PathAccumulator(small, large, self.steps),
            swaps=SwapAccumulator(small, large, [(g.children, g.parents) for g in self.groups]),
        )
        if headline:
            self.plus_novel = insert(small, large, self.c.novel_features, name=f"{small.name}+novel")
            self.accs["plus_novel"] = MetricsAccumulator(self.plus_novel)
        if self.activation and large.d_sae <= query_block(large, small):
            self.accs["activation"] = CoactivationAccumulator(large, small)
        return list(self.accs.values())

    @property
    def label(self) -> str:
        w = self.large.d_sae
        return f"{w} vs {self.small.d_sae}" + (" (seed)" if self.kind == "seed" else "")

    def result(self, metrics: dict[int, Metrics], activation: MaxCosine | None = None) -> PairStudy:
        """The PairStudy, from the finished accumulators and the two SAEs' held-out Metrics."""
        dmse = self.accs["insertion"].result()
        path = self.accs["interpolation"].result()
        sd, sl = self.accs["swaps"].result()
        ms, ml = metrics[id(self.small)], metrics[id(self.large)]
        if activation is None and "activation" in self.accs:
            activation = self.accs["activation"].result()
        cal = {"decoder": calibrate(self.c.max_cos, dmse, "decoder cosine")}
        if activation is not None:
            cal["activation"] = calibrate(activation.values, dmse, "activation similarity")
        c = self.c
        return PairStudy(
            pair=self.label,
            kind=self.kind,
            small=self.small.name,
            large=self.large.name,
            n_large=self.large.d_sae,
            novel=int(c.novel.sum()),
            novel_fraction=float(c.novel.float().mean()),
            median_max_cos=float(c.max_cos.median()),
            table=delta_table(c, dmse),
            mse_small=ms.mse,
            mse_large=ml.mse,
            mse_plus_novel=float(path.mse[1]),
            l0_small=ms.l0,
            l0_plus_novel=float(path.l0[1]),
            n_groups=len(self.groups),
            swaps_lower_l0=int((sl < 0).sum()),
            swaps_raise_mse=int((sd > 0).sum()),
            mean_swap_dmse=float(sd.mean()) if len(sd) else float("nan"),
            mean_swap_dl0=float(sl.mean()) if len(sl) else float("nan"),
            path_start=float(path.mse[0]),
            path_after_novel=float(path.mse[1]),
            path_end=float(path.mse[-1]),
            path_min=float(path.mse.min()),
            calibration=cal,
        )


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
class PairFeatures:
    """Per large feature of one adjacent pair (saes[small], saes[large]): its classification (max
    cosine, nearest small feature, class), its exact dMSE inserted alone into the small SAE, and
    the pair's swap groups. What the feature cards show against the other SAE of a pair."""

    small: int
    large: int
    classification: Classification
    delta_mse: torch.Tensor
    groups: list[SwapGroup]


@dataclass
class StudyResult:
    """Everything the study measured; `to_dict()` is results.json's content (units: stitchkit.sae).

    family: each SAE's Metrics on the held-out tokens (sorted by width, as `saes`).
    pairs: every adjacent pair's PairStudy (and the headline pair's, when not adjacent); headline:
    the label of the (small, large) pair;
    seed_baseline: the same-width other-seed pair's, when a seed twin was given.
    classification, delta_mse: the (small, large) pair's classes and per-feature insertion dMSE.
    active_inactive: ActiveInactiveMSE.summary() over the novel features (None without any).
    curves: insertion curves per class (features in increasing max cos). interpolation: the path
    and its labels. swaps: swap groups and their effects. plus_novel, swapped, frankenstein: the
    stitched SAEs (provenance per feature) for the caller to save. lineage: the link graph across
    the family (None with one SAE); frontier: the headline pair's stitched SAEs on the MSE-L0 plane
    beside the family's. n_passes: passes made over the held-out tokens.
    """

    config: StudyConfig
    saes: list[SAE]
    family: list[Metrics]
    train_seconds: dict[int, float]
    pairs: list[PairStudy]
    headline: str
    seed_baseline: PairStudy | None
    lineage: Lineage | None
    frontier: Frontier | None
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
    pair_features: list[PairFeatures] = field(default_factory=list)
    card_stats: list[tuple[SAE, object]] = field(default_factory=list)

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
        res["pairs"] = [p.row() for p in self.pairs]
        res["headline"] = self.headline
        res["calibration"] = {
            p.pair: {m: _calibration_dict(cal) for m, cal in p.calibration.items()}
            for p in self.pairs + ([self.seed_baseline] if self.seed_baseline else [])
        }
        if self.seed_baseline is not None:
            res["seed_baseline"] = self.seed_baseline.row()
        if self.lineage is not None:
            res["lineage"] = self.lineage.to_dict()
        if self.frontier is not None:
            res["frontier"] = self.frontier.to_dict()
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
                dict(method=f"least squares ({self.refit['algorithm']})", mse=self.refit["mse"],
                     seconds=self.refit["seconds"]),  # fmt: skip
                dict(method="Adam (1 epoch)", mse=last.mse, seconds=last.retrain_seconds),
            ]
        return res


def _calibration_dict(c: Calibration, roc_points: int = 101) -> dict:
    """A Calibration for results.json: its summary, the tables, and the ROC curve at most
    `roc_points` points (the AUROC is exact from every point)."""
    fpr, tpr = c.roc
    keep = sorted({round(i * (len(fpr) - 1) / (roc_points - 1)) for i in range(roc_points)})
    return dict(
        c.summary(), tables=c.tables, roc=dict(fpr=[fpr[i] for i in keep], tpr=[tpr[i] for i in keep])
    )


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


def _memory_note(what: str, need: int, budget: int) -> str:
    return (f"{what} ran on the sparse co-firing form (stitch.sparse_form: the same result, no "
            f"quadratic matrix): its dense form needs {need / 2**30:.1f} GiB, over this stage's "
            f"{budget / 2**30:.1f} GiB (half the free memory).")  # fmt: skip


def run_study(
    family: Sequence[SAE],
    held: ActsLike,
    train_acts: ActsLike,
    config: StudyConfig | None = None,
    *,
    seed_twin: SAE | None = None,
    train_seconds: dict[int, float] | None = None,
    checkpoint_dir=None,
    progress: Callable[[str], None] | str | None = "auto",
) -> StudyResult:
    """Run the whole study (see the module doc) on `family` (any order; sorted by width).

    held: the held-out tokens every measurement uses (streamed once; a tensor, list or callable);
    train_acts: the retraining stream of the Frankenstein stages, the refit and the frontier's
    normal equations (several passes). seed_twin: an SAE of the headline large SAE's width trained
    with another seed (the seed baseline; None: none). train_seconds: each width's training time,
    carried into the family rows. checkpoint_dir: where the Frankenstein assembly checkpoints
    (resumed when it exists). progress: called with each progress line (stage starts, rates,
    time left); "auto" (the default) prints them to stderr when it is a terminal, None is silent.
    """
    config = config or StudyConfig()
    saes = family_order(family)
    config.check(len(saes))
    say = resolve_progress(progress)
    t = config.threshold
    small, large = saes[config.small], saes[config.large]
    if small.d_sae >= large.d_sae:
        raise InvalidArgumentError(
            f"study: the small SAE {small.name!r} ({small.d_sae}) must be narrower than the large "
            f"SAE {large.name!r} ({large.d_sae})"
        )
    if seed_twin is not None and seed_twin.d_sae != large.d_sae:
        raise InvalidArgumentError(
            f"study: the seed twin {seed_twin.name!r} has {seed_twin.d_sae} features, expected the "
            f"headline large SAE's {large.d_sae}"
        )

    # 1. Decoder geometry and plans: no held-out tokens.
    say("lineage: parent links of every adjacent pair")
    lin = lineage(saes, t) if config.lineage else None
    plans = []
    for i, (a, b) in enumerate(zip(saes, saes[1:])):
        say(f"pair {b.d_sae} vs {a.d_sae}: classes, swap groups, interpolation path")
        links = None
        if lin is not None:
            r = lin.rungs[i]
            links = Links(r.child, r.parent, r.cos)
        plans.append(_PairPlan(a, b, t, "width", links))
    head = next((p for p in plans if p.small is small and p.large is large), None)
    if head is None:  # a headline pair two or more widths apart
        head = _PairPlan(small, large, t, "width")
        plans.append(head)
    seed_plan = _PairPlan(large, seed_twin, t, "seed") if seed_twin is not None else None
    c, groups = head.c, head.groups
    notes: dict[str, str] = {}
    budget = stage_memory(small.device)
    cand = c.novel_features if config.greedy_novel_only else torch.arange(large.d_sae)
    cand_cos = candidate_max_cos(small, large, cand)
    if gram_bytes(len(cand)) > budget:
        what = f"Greedy selection over {len(cand):,} candidates"
        notes["greedy"] = _memory_note(what, gram_bytes(len(cand)), budget)
        say(notes["greedy"])

    say("frankenstein: assembling (decoder retrained with Adam, encoder frozen)")
    stages = assemble(
        saes, train_acts, t, retrain="adam", lr=config.retrain_lr, checkpoint_dir=checkpoint_dir, progress=say
    )
    refit_sae = refit_seconds = refit_algorithm = None
    if stages[-1].added.numel():
        say("frankenstein: least-squares refit of the final decoder")
        tick = Ticker(say, "least-squares refit", None, "batches or CG iterations")
        ls = retrain_decoder(stages[-1].model, train_acts, method="lstsq", progress=tick,
                             mse_tol=config.refit_mse_tol, max_iter=config.refit_max_iter)  # fmt: skip
        refit_sae, refit_seconds, refit_algorithm = ls.sae, ls.seconds, ls.algorithm
    points = []
    need = form_bytes(small.d_sae, large.d_sae)
    if config.frontier:
        say("frontier: the headline pair's codes on the retraining tokens")
        tick = Ticker(say, "frontier pass", tokens_in(train_acts), "tokens")
        if need <= budget:
            acc = NormalEquationsAccumulator([small, large])
        else:
            notes["frontier"] = _memory_note("The MSE-L0 frontier", need, budget)
            say(notes["frontier"])
            acc = CodeColumnsAccumulator(small, [(small, None), (large, None)], keep_x=True)
        run_pass([acc], train_acts, d_in=small.d_in, device=small.device, what="study: train_acts",
                 progress=tick)  # fmt: skip
        dense = need <= budget
        form = (ChangeForm if dense else SparseChangeForm)(acc.result(), small, large)
        points = frontier_points(form, pair_moves(c, groups))

    # 2. One pass over the held-out tokens through every accumulator.
    fam = {id(s): MetricsAccumulator(s) for s in saes}
    if seed_twin is not None:
        fam[id(seed_twin)] = MetricsAccumulator(seed_twin)
    fm = FrankensteinMeasure(stages, saes, accumulators=fam)
    accs: dict[str, object] = {}
    if "greedy" in notes:
        accs["gram"] = CodeColumnsAccumulator(small, [(large, cand)])
    else:
        accs["gram"] = GramAccumulator(small, large, cand)
    if len(c.novel_features):
        accs["active_inactive"] = ActiveInactiveAccumulator(small, large, c.novel_features)
    curve_accs = {}
    for cls, feats in (("novel", c.novel_features), ("reconstruction", c.reconstruction_features)):
        if len(feats):
            order = feats[torch.argsort(c.max_cos[feats], stable=True)]
            curve_accs[cls] = PathAccumulator(
                small, large, insertion_steps(large, order, config.curve_points)
            )
    if refit_sae is not None:
        accs["refit"] = MetricsAccumulator(refit_sae)
    frontier_accs = [MetricsAccumulator(pt.sae) for pt in points]
    pair_accs = [a for plan in plans + ([seed_plan] if seed_plan else []) for a in plan.build(plan is head)]
    card_accs = []
    if config.cards:
        from .measure.cards import FeatureCards

        card_accs = [(s, FeatureCards(s, k=config.cards)) for s in saes + [stages[-1].model]]
    every = (list(fm.accumulators.values()) + list(accs.values()) + list(curve_accs.values())
             + frontier_accs + pair_accs + [a for _, a in card_accs])  # fmt: skip
    stream = _Counted(held)
    say("measuring every experiment in one pass over the held-out tokens")
    tick = Ticker(say, "held-out pass", tokens_in(held), "tokens")
    run_pass(every, stream, d_in=small.d_in, device=small.device, what="study: held", progress=tick)
    coact_fits = "activation" in head.accs
    activation = (
        head.accs["activation"].result() if coact_fits else activation_similarity(large, small, stream)
    )

    # 3. Results.
    metrics = {key: acc.result() for key, acc in fam.items()}
    family_metrics = [metrics[id(s)] for s in saes]
    pairs = [plan.result(metrics, activation if plan is head else None) for plan in plans]
    pair_features = [
        PairFeatures(i, i + 1, plan.c, plan.accs["insertion"].result(), plan.groups)
        for i, plan in enumerate(plans[: len(saes) - 1])
    ]
    seed_baseline = seed_plan.result(metrics) if seed_plan is not None else None
    dmse = head.accs["insertion"].result()
    sd, sl = head.accs["swaps"].result()
    small_m = metrics[id(small)]
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
    gram = accs["gram"].result()
    if "greedy" in notes:
        gram = SparseMarginalGram(gram, cand)
    fr = fm.result()
    fr.sae.name = "frankenstein"
    refit = None
    if refit_sae is not None:
        refit = dict(mse=accs["refit"].result().mse, seconds=refit_seconds, algorithm=refit_algorithm)
    frontier = None
    if points:
        for pt, acc in zip(points, frontier_accs):
            m = acc.result()
            pt.mse, pt.l0 = m.mse, m.l0
        natural = [dict(name=s.name, width=s.d_sae, l0=m.l0, mse=m.mse) for s, m in zip(saes, family_metrics)]
        flags = on_frontier([(pt.l0, pt.mse) for pt in points])
        stitched = [dict(pt.row(), on_frontier=flag) for pt, flag in zip(points, flags)]
        area = budget_area([(r["l0"], r["mse"]) for r in natural], [(r["l0"], r["mse"]) for r in stitched])
        frontier = Frontier(natural, stitched, dict(area, pair=head.label, algorithm=form.algorithm),
                            [pt.sae for pt in points])  # fmt: skip
    return StudyResult(
        config=config,
        saes=saes,
        family=family_metrics,
        train_seconds=dict(train_seconds or {}),
        pairs=pairs,
        headline=head.label,
        seed_baseline=seed_baseline,
        lineage=lin,
        frontier=frontier,
        small=small,
        large=large,
        classification=c,
        delta_mse=dmse,
        table=delta_table(c, dmse),
        active_inactive=accs["active_inactive"].result().summary() if "active_inactive" in accs else None,
        curves={cls: a.result() for cls, a in curve_accs.items()},
        interpolation=head.accs["interpolation"].result(),
        interpolation_labels=head.labels,
        groups=groups,
        swaps=SwapEffect(sd, sl, best, best_mse, best_l0),
        plus_novel=head.plus_novel,
        plus_novel_metrics=head.accs["plus_novel"].result(),
        swapped=swapped,
        selection=select_from_gram(gram, cand_cos, t),
        activation=activation,
        agreement=agreement,
        frankenstein=fr,
        refit=refit,
        n_passes=stream.passes,
        notes=notes,
        pair_features=pair_features,
        card_stats=[(s, a.result()) for s, a in card_accs],
    )
