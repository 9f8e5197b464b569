"""The study's cost against its width: each stage's seconds and peak RSS from the timestamped
progress of bench/study_scale.py runs at several family widths, the exponent of a log-log fit of
each stage's time (and of the run's peak memory) against F, the widest SAE, a markdown table and
a log-log plot. Per Frankenstein stage, the retraining seconds against the stage's own features
are fitted too (one run holds every stage).

    python bench/study_scale_table.py bench/results/cpu_study_scale_{5,6,7,8}.json \
        --out bench/results/cpu_study_scale_summary.json --plot bench/results/cpu_study_scale.png

A stage's memory is its own peak RSS (the polled peak between its first and last message, which
bench/study_scale.py records as since_gib); for a run that did not record it, the run's peak RSS
when the stage ends (getrusage's maximum so far: the peak of that stage or of one before it).
Each stage's memory exponent is fitted like its time exponent. Resident memory has a floor (the
interpreter, torch, the family's own weights), so a memory exponent understates the growth of
what a stage itself allocates.

`modelled` (MODELLED, not measured: no GPU ran here): each stage's CPU seconds divided by the ratio
of a committed H100 measurement to the committed CPU one of the work that dominates the stage:
the exact max cosine at 98,304 x 49,152 x 768 for the lineage (bench/results/
cpu_bf16_screen_amd_epyc.json against gpu_similarity_h100_screened.json), and the encoder forward
per token and feature for the rest (cpu_interpolate_scale.json's forward of 49,152 + 98,304 x 768
against gpu_kernels_h100_98k.json's fused fp32 forward at 98,304 x 768). On 8 GPUs under torchrun
every stage is split 8 ways (tokens, or the similarity's query rows) and the CG refit adds one
all-reduce of its [d_sae + 1, d_in] float64 product per iteration over NVLink (450 GB/s). Launch,
Python and file-reading costs are not in the model, and at these sizes they are seconds: read
the modelled figures as lower bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

# Each stage begins at the first message that starts with its marker and ends where the next
# stage begins ("done" ends the last).
STAGES = [
    ("lineage and pair plans", "lineage:"),
    ("frankenstein (Adam, all stages)", "frankenstein: assembling"),
    ("least-squares refit", "frankenstein: least-squares refit"),
    ("frontier", "frontier:"),
    ("held-out pass (every measurement)", "measuring every experiment"),
    ("end", "done"),
]


def stages(run: dict) -> dict[str, dict]:
    msgs = run["messages"]
    starts = []
    for name, marker in STAGES:
        hit = next((m for m in msgs if m["msg"].startswith(marker)), None)
        if hit is not None:
            starts.append((name, hit))
    out = {}
    for (name, a), (_, b) in zip(starts, starts[1:]):
        out[name] = dict(seconds=round(b["t"] - a["t"], 1), peak_rss_gib=_peak(msgs, a, b))
    if starts:
        first = next(m for m in msgs if m["msg"].startswith("family written"))
        end = starts[-1][1]
        whole = dict(seconds=round(end["t"] - first["t"], 1), peak_rss_gib=_peak(msgs, first, end))
        out["run_study, all stages"] = whole
    return out


def _peak(msgs: list[dict], a: dict, b: dict) -> float:
    """The peak RSS between messages a and b: the largest since_gib of the messages after a up to
    b (each is the peak since the message before it), or, for a run that did not record it,
    getrusage's maximum at b (the peak of that stage or of one before it)."""
    inside = msgs[msgs.index(a) + 1 : msgs.index(b) + 1]
    if inside and all("since_gib" in m for m in inside):
        return max(m["since_gib"] for m in inside)
    return b["rss_gib"]


def frankenstein_stages(run: dict) -> list[dict]:
    """Per assembly stage: the features retrained and the seconds from its start to the next."""
    msgs = run["messages"]
    rows = []
    for i, m in enumerate(msgs):
        hit = re.match(r"stage (\d+): retraining the decoder of (\d+) features", m["msg"])
        if not hit:
            continue
        end = next((n for n in msgs[i + 1 :] if not n["msg"].startswith(f"stage {hit[1]}: retraining")), None)
        if end is not None:
            rows.append(dict(stage=int(hit[1]), features=int(hit[2]), seconds=round(end["t"] - m["t"], 1)))
    return rows


def pair_plans(run: dict) -> list[dict]:
    """Per adjacent pair: the large SAE's width and the seconds its plan took (classes, swap
    groups, interpolation path), from one pair's message to the next."""
    msgs = run["messages"]
    rows = []
    for i, m in enumerate(msgs):
        hit = re.match(r"pair (\d+) vs (\d+):", m["msg"])
        if hit and i + 1 < len(msgs):
            secs = round(msgs[i + 1]["t"] - m["t"], 1)
            rows.append(dict(large=int(hit[1]), small=int(hit[2]), seconds=secs))
    return rows


def fit(xs: list[float], ys: list[float]) -> float | None:
    """The slope of log y against log x by least squares (None under two points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx, 2) if sxx else None


RESULTS = Path(__file__).resolve().parent / "results"
NVLINK = 450e9


def ratios() -> dict:
    """CPU seconds over H100 seconds for the same work (module doc), from committed files."""
    cpu_sim = json.loads((RESULTS / "cpu_bf16_screen_amd_epyc.json").read_text())
    gpu_sim = json.loads((RESULTS / "gpu_similarity_h100_screened.json").read_text())
    big = next(r for r in cpu_sim["rows"] if (r["Fq"], r["Fk"], r["d"]) == (98304, 49152, 768))
    sim = big["max_cosine_cpu_screen_s"] / (gpu_sim["max_cosine"]["fp32"]["triton_screened_ms"] / 1e3)
    fwd = json.loads((RESULTS / "cpu_interpolate_scale.json").read_text())
    cpu_per = fwd["rows"]["forward_both_s"] / (fwd["tokens"] * sum(fwd["widths"]))
    k = json.loads((RESULTS / "gpu_kernels_h100_98k.json").read_text())["shapes"][0]
    gpu_per = k["forward"]["triton_fused_ms"] / 1e3 / (k["n"] * k["d_sae"])
    return dict(similarity=round(sim, 1), forward=round(cpu_per / gpu_per, 1))


def modelled(table: list[dict], widest: dict, r: dict, cg_iterations: int, d_sae: int) -> dict:
    """One H100 and 8 under torchrun, per stage of the widest run (module doc): MODELLED."""
    out = {}
    for row in table:
        secs = row["seconds"][-1]
        if secs is None or row["stage"].startswith("run_study"):
            continue
        one = secs / (r["similarity"] if row["stage"].startswith("lineage") else r["forward"])
        comm = cg_iterations * (d_sae + 1) * widest["d_in"] * 8 / NVLINK if "refit" in row["stage"] else 0.0
        out[row["stage"]] = dict(one_h100_s=round(one, 2), eight_h100_s=round(one / 8 + comm, 2))
    out["total"] = {k: round(sum(v[k] for v in out.values()), 1) for k in ("one_h100_s", "eight_h100_s")}
    return dict(
        note="MODELLED from committed CPU and H100 rates (module doc), not measured; lower bounds",
        ratios=r,
        stages=out,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    runs = [r for r in runs if r.get("finished")]
    runs.sort(key=lambda r: max(r["widths"]))
    widths = [max(r["widths"]) for r in runs]
    per = [stages(r) for r in runs]
    names = [n for n, _ in STAGES[:-1]] + ["run_study, all stages"]
    table = []
    for name in names:
        secs = [p.get(name, {}).get("seconds") for p in per]
        rss = [p.get(name, {}).get("peak_rss_gib") for p in per]
        ok = [(w, s) for w, s in zip(widths, secs) if s is not None]
        okm = [(w, m) for w, m in zip(widths, rss) if m is not None]
        table.append(dict(stage=name, widths=widths, seconds=secs, peak_rss_gib=rss,
                          time_exponent=fit([w for w, _ in ok], [s for _, s in ok]),
                          memory_exponent=fit([w for w, _ in okm], [m for _, m in okm])))  # fmt: skip
    peak = [p["run_study, all stages"]["peak_rss_gib"] for p in per]
    widest = runs[-1]
    frank = frankenstein_stages(widest)
    res = dict(
        device=widest["device"],
        torch=widest["torch"],
        runs=[str(p) for p in args.runs],
        widths=widths,
        held_tokens=widest["held_tokens"],
        train_tokens=widest["train_tokens"],
        stages=table,
        memory_exponent=fit(widths, peak),
        frankenstein_stages=frank,
        frankenstein_time_exponent=fit([r["features"] for r in frank], [r["seconds"] for r in frank]),
        pair_plans=pair_plans(widest),
    )
    plans = [r for r in res["pair_plans"] if r["large"] >= 6144]  # below, fixed costs dominate
    res["pair_plan_time_exponent"] = fit([r["large"] for r in plans], [r["seconds"] for r in plans])
    refit = ((widest.get("refit") or [{}])[0]).get("method", "")  # e.g. "... 52 iterations ..."
    its = re.search(r"(\d+) iterations", refit)
    said = " ".join(m["msg"] for m in widest["messages"][::-1])
    size = re.search(r"retraining the decoder of (\d+) features", said)
    its, size = int(its[1]) if its else 0, int(size[1]) if size else 0
    res["modelled_gpu"] = modelled(table, widest, ratios(), its, size)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    head = "| stage | " + " | ".join(f"F = {w:,}" for w in widths) + " | time exponent | memory exponent |"
    print(head)
    print("|" + "---|" * (len(widths) + 3))
    for row in table:
        pairs = zip(row["seconds"], row["peak_rss_gib"])
        cells = [f"{s:,.0f} s, {m:.1f} GiB" if s is not None else "-" for s, m in pairs]
        print(f"| {row['stage']} | " + " | ".join(cells)
              + f" | {row['time_exponent']} | {row['memory_exponent']} |")  # fmt: skip
    print(f"\npeak RSS exponent: {res['memory_exponent']}; Frankenstein retraining time exponent per stage "
          f"features: {res['frankenstein_time_exponent']}; pair plan time exponent per large width "
          f"(6,144 up): {res['pair_plan_time_exponent']}")  # fmt: skip
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        for row in table:
            ok = [(w, s) for w, s in zip(widths, row["seconds"]) if s]
            if ok:
                a.loglog(*zip(*ok), "o-", label=f"{row['stage']} (slope {row['time_exponent']})")
        a.set_xlabel("F, the widest SAE")
        a.set_ylabel("seconds")
        a.legend(fontsize=7)
        a.set_title(f"run_study stages, {widest['device']}", fontsize=9)
        for row in table:
            okm = [(w, m) for w, m in zip(widths, row["peak_rss_gib"]) if m]
            if okm:
                b.loglog(*zip(*okm), "o-", label=f"{row['stage']} (slope {row['memory_exponent']})")
        b.set_xlabel("F, the widest SAE")
        b.set_ylabel("peak RSS, GiB")
        b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
