#!/usr/bin/env python3
"""CPU: what the feature cards (measure.cards.FeatureCards) add to the study's held-out pass, in
one run on one machine:
(a) the study's own held-out pass (every accumulator run_study streams the held-out tokens
    through, captured from run_study) at the demo's widths, d_in 384 x 384 .. 6,144, on the
    synthetic family (stitchkit.data.family: toy-like sparse tokens, L0 30..60), 20,000 held-out
    tokens: without cards, and with FeatureCards for every family SAE and the final Frankenstein
    SAE (what the study adds);
(b) one relu SAE at 98,304 x 768 (the synthetic family's widest, L0 ~50): evaluate's accumulator
    alone, and with FeatureCards beside it (the cards' cost against the cheapest pass).
The passes alternate (without, with; then with, without), --reps of each; the ratio is the median
time with cards over the median without. Also: the cards' own update seconds within the pass,
result() seconds, peak RSS growth during each pass (polled) and the state's bytes per feature.

    python bench/cards_overhead.py --out bench/results/cpu_cards_overhead.json [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_bf16_screen import cpu_info  # noqa: E402
from study_scale import RssWatch, rss_now_gib  # noqa: E402

import stitchkit as sk  # noqa: E402
import stitchkit.study as study_module  # noqa: E402
from stitchkit.data.family import make_family  # noqa: E402
from stitchkit.measure import FeatureCards, MetricsAccumulator, run_pass  # noqa: E402


class TimedCards(FeatureCards):
    """FeatureCards that adds up the seconds of its own updates."""

    seconds = 0.0

    def update(self, batch) -> None:
        t = time.perf_counter()
        super().update(batch)
        self.seconds += time.perf_counter() - t


def timed_passes(make, acts, d_in: int, reps: int, watch: RssWatch) -> dict:
    """make(with_cards) -> (accumulators, cards); each pass timed, alternating the order."""
    runs = {False: [], True: []}
    for rep in range(reps):
        for with_cards in (False, True) if rep % 2 == 0 else (True, False):
            accs, cards = make(with_cards)
            before = rss_now_gib()
            watch.take()
            t0 = time.perf_counter()
            run_pass(accs, acts, d_in=d_in, device=torch.device("cpu"))
            seconds = time.perf_counter() - t0
            row = dict(seconds=round(seconds, 3), rss_growth_gib=round(watch.take() - before, 3))
            if with_cards:
                row["cards_update_s"] = round(sum(c.seconds for c in cards), 3)
                t0 = time.perf_counter()
                for c in cards:
                    c.result()
                row["cards_result_s"] = round(time.perf_counter() - t0, 3)
            runs[with_cards].append(row)
            print(f"  {'with' if with_cards else 'without'} cards: {row}", flush=True)
    without = statistics.median(r["seconds"] for r in runs[False])
    with_ = statistics.median(r["seconds"] for r in runs[True])
    return dict(
        without_cards=runs[False],
        with_cards=runs[True],
        median_without_s=without,
        median_with_s=with_,
        ratio=round(with_ / without, 4),
        cards_update_share=round(statistics.median(r["cards_update_s"] for r in runs[True]) / without, 4),
    )


class _Captured(Exception):
    pass


def study_case(args, watch: RssWatch) -> dict:
    """(a): run_study on the synthetic family at the demo's widths, its held-out pass captured and
    timed with and without cards, then the study stopped."""
    d_in, widths = 384, [384 * 2**i for i in range(5)]
    fam = make_family(d_in, widths)
    held = fam.sample(args.held, seed=1)
    train = list(fam.sample(args.train, seed=2).split(4096))
    config = sk.StudyConfig(small=1, large=2)  # the demo's headline pair, 768 vs 1,536
    if any(f.name == "cards" for f in dataclasses.fields(config)):
        config = dataclasses.replace(config, cards=0)  # the study's own cards: stripped below anyway
    real = study_module.run_pass
    out = {}

    def capture(accumulators, acts, *, what="acts", **kw):
        if what != "study: held":
            return real(accumulators, acts, what=what, **kw)
        accs = [a for a in accumulators if not isinstance(a, FeatureCards)]
        frank = [
            a.sae
            for a in accs
            if isinstance(a, MetricsAccumulator) and a.sae.name.startswith("frankenstein@")
        ]
        last = max(frank, key=lambda s: int(s.name.split("@")[1])) if frank else None
        final = [s for s in frank if s.name == last.name][-1:] if last else []  # stages[-1].model
        pristine = copy.deepcopy((accs, fam.saes + final))

        def make(with_cards):
            a, saes = copy.deepcopy(pristine)
            cards = [TimedCards(s) for s in saes] if with_cards else []
            return a + cards, cards

        print(f"(a) held-out pass: {len(accs)} accumulators, cards for {len(fam.saes) + len(final)} SAEs")
        out.update(timed_passes(make, acts, kw["d_in"], args.reps, watch))
        probe = [FeatureCards(s) for s in pristine[1]]
        out.update(
            accumulators=len(accs),
            card_saes=[f"{s.name} ({s.d_sae})" for s in pristine[1]],
            card_features=sum(s.d_sae for s in pristine[1]),
            cards_state_mib=round(sum(c.state_bytes() for c in probe) / 2**20, 2),
        )
        raise _Captured

    study_module.run_pass = capture
    try:
        sk.run_study(fam.saes, held, lambda: iter(train), config, progress=None)
    except _Captured:
        pass
    finally:
        study_module.run_pass = real
    return dict(d_in=d_in, widths=widths, held_tokens=args.held, train_tokens=args.train,
                family="make_family(384, widths), L0 30..60", config="StudyConfig(small=1, large=2)",
                **out)  # fmt: skip


def wide_case(args, watch: RssWatch) -> dict:
    """(b): one 98,304-wide relu SAE, evaluate's accumulator with and without cards."""
    fam = make_family(768, [49152, 98304], l0=(50.0, 50.0))
    sae = fam.saes[-1]
    x = fam.sample(args.wide_tokens, seed=1)
    del fam.saes[0]

    def make(with_cards):
        cards = [TimedCards(sae)] if with_cards else []
        return [MetricsAccumulator(sae)] + cards, cards

    print(f"(b) {sae.d_sae:,} x {sae.d_in}, {len(x):,} tokens")
    out = timed_passes(make, list(x.split(4096)), sae.d_in, args.reps, watch)
    m = sk.evaluate(sae, list(x[:4096].split(4096)))
    probe = FeatureCards(sae)
    return dict(d_sae=sae.d_sae, d_in=sae.d_in, tokens=len(x), l0=round(m.l0, 2),
                sae="make_family(768, [49152, 98304], l0=(50, 50)).saes[-1] (relu)",
                state_bytes_per_feature=probe.state_bytes() / sae.d_sae,
                state_mib=round(probe.state_bytes() / 2**20, 1), **out)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--held", type=int, default=20_000)
    ap.add_argument("--train", type=int, default=20_000, help="retraining tokens (not timed)")
    ap.add_argument("--wide-tokens", type=int, default=16_384)
    ap.add_argument("--quick", action="store_true", help="small token counts, one rep")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.held, args.train, args.wide_tokens = 1, 2000, 4096, 2048
    res = dict(device=cpu_info(), k=20, samples=2, bands=4, reps=args.reps, cases={})
    watch = RssWatch()
    out = Path(args.out)
    for name, case in (("study_demo_widths", study_case), ("wide_98304", wide_case)):
        t0 = time.perf_counter()
        res["cases"][name] = case(args, watch)
        res["cases"][name]["case_seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"{name}: ratio {res['cases'][name]['ratio']}", flush=True)


if __name__ == "__main__":
    main()
