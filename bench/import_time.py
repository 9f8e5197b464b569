"""How long `import stitchkit` takes in a fresh interpreter, the median of --runs runs: the wall
time beside `import torch` alone, and (stitchkit_own_s, from `python -X importtime` after torch is
imported) what stitchkit's own modules add on top of torch.

    python bench/import_time.py [--runs 15] [--out bench/results/cpu_import_time.json] [--root DIR]

--root: import the stitchkit found in DIR instead (e.g. a clone of an older commit), to compare.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def once(code: str, root: str | None) -> float:
    prefix = f"import sys; sys.path.insert(0, {root!r}); " if root else ""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", prefix + code], check=True)
    return time.perf_counter() - t0


def own_seconds(root: str | None) -> float:
    """The cumulative import time of `stitchkit` (-X importtime) in an interpreter that has
    imported torch already: what stitchkit's own modules (and anything only they import) cost."""
    prefix = f"import sys; sys.path.insert(0, {root!r}); " if root else ""
    code = prefix + "import torch; import stitchkit"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    for line in err.splitlines():
        if line.count("|") == 2 and line.split("|")[2].strip() == "stitchkit":
            return int(line.split("|")[1]) / 1e6
    raise RuntimeError(f"no import time for stitchkit in:\n{err[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--root", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    once("import stitchkit", args.root)  # warm the file cache
    rows = {}
    for what, code in (("torch", "import torch"), ("stitchkit", "import stitchkit")):
        times = [once(code, args.root) for _ in range(args.runs)]
        rows[what] = dict(median_s=statistics.median(times), min_s=min(times))
    rows["stitchkit_own_s"] = statistics.median(own_seconds(args.root) for _ in range(args.runs))
    res = dict(device=f"CPU ({platform.processor() or platform.machine()})", python=platform.python_version(),
               root=args.root or "installed", runs=args.runs, **rows)  # fmt: skip
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
