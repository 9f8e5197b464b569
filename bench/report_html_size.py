"""report.html at the reference work's largest width: bytes of the page and of its card files
per feature, and in headless Chromium (Debian's, offline) the time from navigation to the feature
index being interactive, to the plots being drawn, to a card being open, and to a search and a
sort over every feature.

Synthetic cards (tests/example_cards.py, made on demand): an SAE of 98,304 features paired with
one of 768, each card with `--top` top contexts and 3 bands of 2 samples, `--context` tokens each;
and, as the baseline in the same run, the same study at 768 x 1,536.

    python bench/report_html_size.py --out bench/results/cpu_report_html.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stitchkit.report_html import CARDS_DIR, write_report_html  # noqa: E402
from tests.browser import Watched, chromium_path  # noqa: E402
from tests.example_cards import example_cards  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from cpu_bf16_screen import cpu_info  # noqa: E402


def sizes(out: Path, n_features: int) -> dict:
    page = (out / "report.html").stat().st_size
    files = sorted((out / CARDS_DIR).glob("*.js")) if (out / CARDS_DIR).is_dir() else []
    cards = sum(p.stat().st_size for p in files)
    return dict(
        page_bytes=page,
        page_bytes_per_feature=page / n_features,
        card_files=len(files),
        card_bytes=cards,
        card_bytes_per_feature=cards / n_features,
        largest_card_file_bytes=max((p.stat().st_size for p in files), default=0),
    )


def in_chromium(browser, page_path: Path, sae: int, d_sae: int, runs: int) -> dict:
    """Medians over `runs` fresh pages (and the runs themselves)."""
    rows = []
    for _ in range(runs):
        w = Watched(browser)
        try:
            page = w.page
            t0 = time.perf_counter()
            page.goto(page_path.resolve().as_uri())
            page.wait_for_function("window.stitchkit && window.stitchkit.ready", timeout=60_000, polling=5)
            wall_ready = time.perf_counter() - t0
            page.wait_for_function(
                "document.documentElement.dataset.drawn === '1'", timeout=60_000, polling=5
            )
            r = page.evaluate("() => ({ready: stitchkit.readyAt, drawn: stitchkit.drawnAt})")
            f_cold, f_warm = d_sae // 2 + 7, d_sae // 2 + 8  # the same card file: first opened, then loaded
            opens = {}
            for name, f in (("card_open_cold_ms", f_cold), ("card_open_warm_ms", f_warm)):
                page.select_option("#ix-sae", str(sae))
                page.fill("#ix-search", f"#{f}")
                page.wait_for_function("t => stitchkit.lastQuery === t", arg=f"#{f}", polling=5)
                t1 = time.perf_counter()
                page.click(f'#ix-rows .ix-row[data-sae="{sae}"][data-feature="{f}"]')
                page.wait_for_selector(f'#card-left .card[data-sae="{sae}"][data-feature="{f}"]')
                opens[name + "_wall"] = (time.perf_counter() - t1) * 1e3
                opens[name] = page.evaluate("() => stitchkit.lastOpen.ms")
            page.select_option("#ix-sae", "-1")
            page.fill("#ix-search", "tok:the")
            page.wait_for_function("() => stitchkit.lastQuery === 'tok:the'", polling=5)
            search_ms = page.evaluate("() => stitchkit.lastFilterMs")
            page.fill("#ix-search", "")
            page.wait_for_function("() => stitchkit.lastQuery === ''", polling=5)
            page.click("#ix-head button[data-sort=dmse]")
            sorted_by = "document.querySelector('#ix-head button[data-sort=dmse]').getAttribute('aria-sort')"
            page.wait_for_function(f"{sorted_by} !== 'none'")
            sort_ms = page.evaluate("() => stitchkit.lastFilterMs")
            heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : null")
            w.check_clean()
            rows.append(
                dict(
                    ready_ms=r["ready"],
                    drawn_ms=r["drawn"],
                    ready_wall_ms=wall_ready * 1e3,
                    search_ms=search_ms,
                    sort_ms=sort_ms,
                    js_heap_bytes=heap,
                    **opens,
                )
            )
        finally:
            w.close()
    return dict(
        {k: statistics.median(r[k] for r in rows) for k in rows[0] if rows[0][k] is not None}, runs=rows
    )


def study(widths: tuple[int, int], args, browser, tmp: Path) -> dict:
    t0 = time.perf_counter()
    cards = example_cards(
        2, widths, stitched=False, lazy=True, n_top=args.top, n_bands=3, per_band=2, context=args.context
    )
    made = time.perf_counter() - t0
    out = tmp / f"report_{widths[1]}"
    t0 = time.perf_counter()
    page = write_report_html(cards, out)
    wrote = time.perf_counter() - t0
    n = sum(widths)
    row = dict(widths=list(widths), features=n, index_seconds=made, write_seconds=wrote, **sizes(out, n))
    print(json.dumps(row), flush=True)
    row["chromium"] = in_chromium(browser, page, 1, widths[1], args.runs)
    print(json.dumps({k: v for k, v in row["chromium"].items() if k != "runs"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu_report_html.json")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs=2, default=(768, 98_304))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        sys.exit("no Chromium: apt-get install chromium")
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(executable_path=exe, headless=True)
        result = dict(
            what="report.html: page and card-file bytes per feature; headless Chromium: navigation to index "
            "interactive (stitchkit.readyAt) and to plots drawn, card open (click to rendered, cold: its "
            "card file not yet loaded), search ('tok:the') and sort (dMSE) over every feature",
            device=dict(
                cpu=cpu_info()["cpu"],
                cores=len(os.sched_getaffinity(0)),
                load_average_at_start=os.getloadavg(),
            ),
            versions=dict(
                chromium=browser.version,
                playwright=metadata.version("playwright"),
                python=platform.python_version(),
            ),
            card=dict(top=args.top, bands=3, per_band=2, context=args.context, nearest=3),
            baseline=study((args.widths[0], 2 * args.widths[0]), args, browser, Path(tmp)),
            large=study(tuple(args.widths), args, browser, Path(tmp)),
        )
        browser.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
