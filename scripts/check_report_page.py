#!/usr/bin/env python3
"""The report page's browser test on any demo's output, e.g. the real demo's (too slow for CI):
open OUT/report.html in headless Debian Chromium, offline, and run tests/browser.check_demo_report
(every feature has a card; a card of each SAE shows its contexts with the marked token the held-out
store's token; the side-by-side view shows results.json's cosine; no console error, no request).

    python scripts/check_report_page.py stitchkit-out [--screenshot docs/demo-report/report-html.png]

Exits 0 when every check passes, 1 with the failed check otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a demo's output directory")
    ap.add_argument("--screenshot", type=Path, help="where to write a screenshot of the page")
    args = ap.parse_args()
    from tests import browser as b

    t0 = time.perf_counter()
    with b.launched() as chromium:
        try:
            b.check_demo_report(chromium, args.out, args.screenshot)
        except AssertionError as e:
            print(f"check_report_page: {args.out}/report.html failed: {e}", file=sys.stderr)
            return 1
    print(f"check_report_page: {args.out}/report.html passed every check ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
