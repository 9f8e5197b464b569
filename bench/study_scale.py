"""CPU: the whole study (run_study) on the synthetic family (stitchkit.data.family) at the
reference work's shapes: d_in 768, widths 768 * 2^i, held-out and retraining tokens as issue 29
states them. Every progress message is timestamped, so each stage's seconds are the gaps between
messages; the JSON (stages so far, peak RSS) is written after every message, so a run stopped by
its time limit keeps what it reached. Each message has the run's peak RSS so far (rss_gib) and
the peak since the message before it (since_gib, polled), so each stage's own peak is known.

    python bench/study_scale.py --widths 5 --out bench/results/cpu_study_scale_5.json
    python bench/study_scale.py --widths 8 --out bench/results/cpu_study_scale_8.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from path_metrics_cpu import cpu_name  # noqa: E402

import stitchkit as sk  # noqa: E402
from stitchkit.data.family import make_family  # noqa: E402
from stitchkit.data.store import ActivationStore  # noqa: E402


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def rss_now_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


class RssWatch:
    """The largest resident set seen since the last take() (polled every 0.1 s by a thread): each
    stage's own peak, where getrusage's maximum is the run's so far."""

    def __init__(self):
        self.peak = 0.0
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            self.peak = max(self.peak, rss_now_gib())
            time.sleep(0.1)

    def take(self) -> float:
        out, self.peak = max(self.peak, rss_now_gib()), 0.0
        return round(out, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--widths", type=int, default=8, help="how many widths, 768 * 2^i")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--held", type=int, default=20_000)
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the family (default: a temp dir)")
    args = ap.parse_args()
    widths = [args.d_in * 2**i for i in range(args.widths)]
    res = dict(device=f"CPU: {cpu_name()}, {torch.get_num_threads()} threads", torch=torch.__version__,
               d_in=args.d_in, widths=widths, held_tokens=args.held, train_tokens=args.train,
               family="stitchkit.data.family.make_family(seed=0), L0 30..60", config="StudyConfig()",
               messages=[], finished=False)  # fmt: skip
    out = Path(args.out)
    t0 = time.perf_counter()
    watch = RssWatch()

    def say(message: str) -> None:
        t = round(time.perf_counter() - t0, 1)
        res["messages"].append(dict(t=t, rss_gib=peak_rss_gib(), since_gib=watch.take(), msg=message))
        print(f"{res['messages'][-1]['t']:8.1f}s  {message}", flush=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    work = args.dir or Path(tempfile.mkdtemp(prefix="stitchkit-study-scale-"))
    say(f"building the family {widths} x {args.d_in} in {work}")
    fam = make_family(args.d_in, widths)
    paths = fam.write(work, train_tokens=args.train, held_tokens=args.held)
    del fam
    saes = [sk.load_sae(p) for p in paths["saes"]]
    held = torch.cat(list(ActivationStore(paths["held"]).batches(shuffle=False)))
    train = ActivationStore(paths["train"])
    say("family written; run_study starts")
    study = sk.run_study(saes, held, lambda: train.batches(4096, shuffle=False), sk.StudyConfig(),
                         checkpoint_dir=work / "frankenstein", progress=say)  # fmt: skip
    d = study.to_dict(dict(model="synthetic"))
    res["refit"] = d.get("refit")
    res["finished"] = True
    say("done")


if __name__ == "__main__":
    main()
