"""report.html in a real browser: Debian's Chromium driven by Playwright, with every request
that is not file:// aborted and recorded, and checks of the page against the card data it was
written from. The checks take (page, cards) so that a test of any report (the synthetic one of
test_report_html.py, the toy demo's) can run them.

Set STITCHKIT_SKIP_BROWSER=1 to skip the browser tests; without it a missing Chromium or
Playwright fails them, with what to install (`python3 dev.py test` installs both)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

SKIP_ENV = "STITCHKIT_SKIP_BROWSER"
CHROMIUM_ENV = "STITCHKIT_CHROMIUM"  # a Chromium binary other than Debian's
SCREENSHOT_ENV = "STITCHKIT_SCREENSHOTS"  # a folder for the tests' screenshots (else pytest's tmp_path)


def chromium_path() -> str | None:
    """Debian's Chromium (or $STITCHKIT_CHROMIUM), never a browser build of Playwright's own."""
    for path in (os.environ.get(CHROMIUM_ENV), "/usr/bin/chromium", shutil.which("chromium")):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


@contextlib.contextmanager
def launched():
    """A headless Chromium, or the test skipped (STITCHKIT_SKIP_BROWSER=1) or failed (none)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the browser tests are skipped on request")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            f"the report's browser tests need Playwright's Python package: `python3 dev.py test` installs "
            f"it (stitchkit[dev]), or `pip install playwright`; {SKIP_ENV}=1 skips them",
            pytrace=False,
        )
    exe = chromium_path()
    if exe is None:
        pytest.fail(
            f"the report's browser tests need Chromium at /usr/bin/chromium: `apt-get install chromium` "
            f"(`python3 dev.py test` does, as root), or set {CHROMIUM_ENV}; {SKIP_ENV}=1 skips them",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page opened from disk, with what went wrong on it: console errors, page errors, and
    every request that was not for a file:// URL (each one aborted)."""

    def __init__(self, browser, width: int = 1400, height: int = 1000):
        self.context = browser.new_context(viewport=dict(width=width, height=height))
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.offline: list[str] = []
        self.page.on(
            "console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", self._request)
        self.context.route("**/*", self._route)

    def _request(self, request) -> None:
        if not request.url.startswith("file://"):
            self.offline.append(request.url)

    def _route(self, route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    def open(self, path: Path):
        self.page.goto(Path(path).resolve().as_uri())
        self.page.wait_for_function("window.stitchkit && window.stitchkit.ready", timeout=30_000)
        self.page.wait_for_function("document.documentElement.dataset.drawn === '1'", timeout=30_000)
        return self.page

    def check_clean(self, allow: tuple[str, ...] = ()) -> None:
        """No request left the disk, and no error but those containing one of `allow`."""
        assert not self.offline, f"the page asked the network for {self.offline}"
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        assert not errors, errors

    def close(self) -> None:
        self.context.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $STITCHKIT_SCREENSHOTS, else the test's tmp_path."""
    out = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- checks of a page against its cards --------------------------------------------------------


def match_count(page) -> int:
    return int(page.get_attribute("#match-count", "data-count"))


def search(page, text: str) -> int:
    """Type `text` into the index's search box; the number of features that match."""
    page.fill("#ix-search", text)
    page.wait_for_function(
        "t => document.getElementById('ix-search').value === t && window.stitchkit.lastQuery === t", arg=text
    )
    return match_count(page)


def check_index(page, cards: dict) -> None:
    """The index holds every feature of every SAE, and its visible rows are real features."""
    total = sum(s["d_sae"] for s in cards["saes"])
    assert match_count(page) == total == int(page.get_attribute("#match-count", "data-total"))
    rows = page.locator("#ix-rows .ix-row")
    assert 0 < rows.count() < max(total, 200)
    first = rows.first
    sae, f = int(first.get_attribute("data-sae")), int(first.get_attribute("data-feature"))
    assert first.locator("span").nth(1).inner_text() == str(f)
    assert cards["saes"][sae]["name"] in first.inner_text()


def check_search(page, cards: dict) -> None:
    """Searching by feature index, top token and class counts what the data says."""
    saes = cards["saes"]
    for f in (0, max(s["d_sae"] for s in saes) - 1):
        assert search(page, f"#{f}") == sum(1 for s in saes if f < s["d_sae"])
    token = next(
        (t for s in saes for t in s["index"]["top_token"] if t and not any(c.isspace() for c in t)), None
    )
    if token is not None:
        want = sum(1 for s in saes for t in s["index"]["top_token"] if token.lower() in t.lower())
        assert search(page, f"tok:{token}") == want
    classes = [c for s in saes for c in s["index"]["class"]]
    for cls in sorted({c for c in classes if c is not None}):
        assert search(page, f"class:{cls}") == classes.count(cls)
    page.select_option("#ix-sae", "0")
    assert search(page, "") == saes[0]["d_sae"]
    page.select_option("#ix-sae", "-1")
    assert search(page, "") == sum(s["d_sae"] for s in saes)


def check_sort(page, cards: dict) -> None:
    """Sorting by max cosine puts the largest first (the index shows it rounded)."""
    page.click("#ix-head button[data-sort=max_cos]")
    sorted_by = "document.querySelector('#ix-head button[data-sort=max_cos]').getAttribute('aria-sort')"
    page.wait_for_function(f"{sorted_by} === 'descending'")
    top = page.locator("#ix-rows .ix-row").first
    sae, f = int(top.get_attribute("data-sae")), int(top.get_attribute("data-feature"))
    best = max((c for s in cards["saes"] for c in s["index"]["max_cos"] if c is not None), default=None)
    if best is not None:
        assert abs(cards["saes"][sae]["index"]["max_cos"][f] - best) <= 1e-4 * abs(best)
    page.click("#ix-head button[data-sort=feature]")


def card_of(cards: dict, sae: int, feature: int) -> dict:
    by = cards["cards"][str(sae)] if str(sae) in cards["cards"] else cards["cards"][sae]
    return by[str(feature)] if str(feature) in by else by[feature]


def open_card(page, sae: int, feature: int, via_row: bool = True) -> None:
    """Open a card by clicking its index row (searched for), or through the page's hook."""
    if via_row:
        page.select_option("#ix-sae", str(sae))
        search(page, f"#{feature}")
        page.click(f'#ix-rows .ix-row[data-sae="{sae}"][data-feature="{feature}"]')
    else:
        page.evaluate("([s, f]) => window.stitchkit.open(s, f)", [sae, feature])
    page.wait_for_selector(f'#card-left .card[data-sae="{sae}"][data-feature="{feature}"]')


SHOWN_EXAMPLES = """els => els.map(e => {
  const toks = [...e.querySelectorAll('.tok')], marks = [...e.querySelectorAll('.tok.mark')];
  return {row: e.dataset.row, n: toks.length, marks: marks.map(m => [m.dataset.row, m.textContent])};
})"""


def check_card(page, cards: dict, sae: int, feature: int) -> None:
    """The open card shows every context in order, each with one marked token: at the example's
    store row (data-row), with that row's token as its text."""
    card = card_of(cards, sae, feature)
    left = page.locator("#card-left .card")
    assert "error" not in (left.get_attribute("class") or ""), left.inner_text()
    want = card["top"] + [e for b in card["bands"] for e in b["examples"]]
    shown = page.locator("#card-left .ex").evaluate_all(SHOWN_EXAMPLES)
    assert len(shown) == len(want)
    for ex, got in zip(want, shown):
        assert got == dict(
            row=str(ex["row"]), n=len(ex["tokens"]), marks=[[str(ex["row"]), ex["tokens"][ex["mark"]]]]
        ), (ex, got)
    text = left.inner_text()
    if card["logits"] is None and card.get("logits_note"):
        assert card["logits_note"] in text
    if card.get("provenance"):
        assert "stitched from" in text
    if card.get("pair"):
        shown_cos = page.locator("#card-left .nearest a[data-cos]").evaluate_all(
            "els => els.map(e => e.dataset.cos)"
        )
        assert [float(x) for x in shown_cos] == [n["cos"] for n in card["pair"]["nearest"]]


def check_side_by_side(page, cards: dict, sae: int, feature: int) -> None:
    """Clicking the card's nearest feature opens it beside the card, both showing their cosine:
    the exact number of the data, in data-cos and in the text."""
    card = card_of(cards, sae, feature)
    near, other = card["pair"]["nearest"][0], card["pair"]["other"]
    page.click(f'#card-left .nearest a[data-open="{other},{near["feature"]}"]')
    page.wait_for_selector(f'#card-right .card[data-sae="{other}"][data-feature="{near["feature"]}"]')
    page.wait_for_selector(f'#card-left .card[data-feature="{feature}"] .cos-to')
    for slot, partner in (("left", f"{other},{near['feature']}"), ("right", f"{sae},{feature}")):
        line = page.locator(f"#card-{slot} .cos-to")
        assert float(line.get_attribute("data-cos")) == near["cos"]
        assert float(line.locator("b.num").inner_text()) == near["cos"]
        assert line.get_attribute("data-partner") == partner
    assert "two" in page.get_attribute("#card-view", "class")


def check_scatter(page, cards: dict) -> None:
    """Hovering the scatter's highest point names its feature; clicking it opens its card (where
    the scatter names its SAE)."""
    sc = (cards.get("study") or {}).get("plots", {}).get("scatter")
    if not sc:
        return
    pts = [
        (d, f)
        for f, c, d in zip(sc["features"], sc["max_cos"], sc["dmse"])
        if c is not None and d is not None
    ]
    _, f = max(pts)
    page.locator("#scatter").scroll_into_view_if_needed()
    xy = page.evaluate("f => window.stitchkit.scatterPoint(f)", f)
    box = page.locator("#scatter").bounding_box()
    page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    page.wait_for_function("f => document.getElementById('scatter').dataset.hover === String(f)", arg=f)
    assert f"#{f} " in page.inner_text("#tip")
    if sc.get("sae") is None:
        return
    page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
    page.wait_for_selector(f'#card-left .card[data-sae="{sc["sae"]}"][data-feature="{f}"]')


def check_demo_report(browser, out: Path, screenshot: Path | None = None) -> None:
    """A demo's output `out` (report.html, cards.json.gz, results.json, activations/held): cards for
    every feature of every SAE; a card of each SAE (its busiest feature) shows its contexts with
    the marked token the held-out store's token at that row; the headline pair's side-by-side view
    shows the nearest cosine of results.json; no console error, no network request."""
    import gzip
    import json

    import torch

    from stitchkit.data.lens import token_strings
    from stitchkit.data.store import ActivationStore

    cards = json.loads(gzip.decompress((out / "cards.json.gz").read_bytes()))
    results = json.loads((out / "results.json").read_text())
    store = ActivationStore(out / "activations" / "held")
    assert [s["d_sae"] for s in cards["saes"][:-1]] == results["setup"]["widths"]
    assert cards["saes"][-1]["name"] == "frankenstein"
    for i, s in enumerate(cards["saes"]):  # a card for every feature
        assert sorted(map(int, cards["cards"][str(i)])) == list(range(s["d_sae"]))
    w = Watched(browser)
    try:
        page = w.open(out / "report.html")
        check_index(page, cards)
        check_search(page, cards)
        for i, s in enumerate(cards["saes"]):
            j = max(range(s["d_sae"]), key=lambda f: s["index"]["rate"][f])  # its busiest feature
            card = cards["cards"][str(i)][str(j)]
            rows = [e["row"] for e in card["top"]]
            words = token_strings(store.tokenizer, store.contexts(torch.tensor(rows)).token_ids.tolist())
            assert [e["tokens"][e["mark"]] for e in card["top"]] == words  # the store's tokens
            open_card(page, i, j)
            check_card(page, cards, i, j)
        large = cards["study"]["plots"]["scatter"]["sae"]
        j = min(range(cards["saes"][large]["d_sae"]), key=lambda f: results["scatter"]["max_cos"][f])
        near = cards["cards"][str(large)][str(j)]["pair"]["nearest"]
        assert near[0]["cos"] == results["scatter"]["max_cos"][j]  # results.json's max cosine
        open_card(page, large, j)
        check_side_by_side(page, cards, large, j)
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=False)
        w.check_clean()
    finally:
        w.close()
