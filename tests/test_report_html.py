"""report.html: what write_report_html writes (files, escaping, ownership), and the page itself in
headless Chromium, offline, against the synthetic card data it was written from
(tests/example_cards.py). The browser checks live in tests/browser.py, for any report's test."""

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from stitchkit.atomic import REPORT_MARK
from stitchkit.errors import InvalidArgumentError, OutputError
from stitchkit.report_html import CARD_MARK, CARDS_DIR, page_data, write_report_html
from tests import browser as b
from tests.example_cards import example_cards


@pytest.fixture(scope="module")
def cards():
    return example_cards(3, (8, 16, 300))  # the widest SAE spans two card files


def embedded(page: str) -> dict:
    m = re.search(r'<script id="stitchkit-data" type="application/json"[^>]*>(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def block_cards(path) -> tuple[str, int, int, dict]:
    """(stamp, sae, block, cards) of a card file, read back as JSON."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(CARD_MARK + "\n")
    m = re.fullmatch(r'stitchkitCards\("(\w+)",(\d+),(\d+),(.*)\);\n', text[len(CARD_MARK) + 1 :], re.S)
    return m.group(1), int(m.group(2)), int(m.group(3)), json.loads(m.group(4))


def test_page_and_card_files(tmp_path, cards):
    page = write_report_html(cards, tmp_path, embed_bytes=0)
    text = page.read_text(encoding="utf-8")
    assert page == tmp_path / "report.html" and text.startswith(REPORT_MARK + "\n<!DOCTYPE html>")
    names = sorted(p.name for p in (tmp_path / CARDS_DIR).iterdir())
    assert names == ["0_0.js", "1_0.js", "2_0.js", "2_1.js", "3_0.js"]
    stamp = re.search(r'data-stamp="(\w+)"', text).group(1)
    got = {}
    for p in (tmp_path / CARDS_DIR).iterdir():
        s, sae, block, part = block_cards(p)
        assert s == stamp and all(int(f) // 256 == block for f in part)
        got.update({(sae, int(f)): c for f, c in part.items()})
    assert got == {(int(s), int(f)): c for s, by in cards["cards"].items() for f, c in by.items()}
    # offline: nothing that names another place to load from
    assert "<link" not in text and not re.search(r"<script[^>]+src=", text) and "://" not in text


def test_text_is_escaped(tmp_path, cards):
    text = write_report_html(cards, tmp_path, embed_bytes=10**9).read_text(encoding="utf-8")
    assert not (tmp_path / CARDS_DIR).exists()  # every card is in the page
    body = text.split("<body>", 1)[1]
    # the only script ends are the page's own; hostile tokens can neither end a script nor open a comment
    assert body.count("</script>") == body.count("<script") and "<!--" not in body
    assert "\u2028" not in text and "\u2029" not in text
    data = embedded(text)
    assert data == json.loads(json.dumps(page_data(cards)))
    assert data["title"] == cards["title"] and "<title>stitchkit report: synthetic &lt;cards&gt;" in text
    assert data["saes"][1]["index"]["top_token"] == cards["saes"][1]["index"]["top_token"]


def test_index_is_rounded_and_complete(cards):
    data = page_data(cards)
    for sae, entry in zip(cards["saes"], data["saes"]):
        ix = entry["index"]
        assert all(len(v) == sae["d_sae"] for v in ix.values())
        for k in ("rate", "max_cos", "dmse"):
            for x, y in zip(sae["index"][k], ix[k]):
                assert (x is None and y is None) or abs(x - y) <= 1e-4 * abs(x)
        assert [data["classes"][c] if c >= 0 else None for c in ix["class"]] == sae["index"]["class"]
    assert data["study"]["tables"][1]["rows"] == [["undefined", ""]]  # NaN, None: as report.md
    assert data["study"]["plots"]["scatter"]["from_index"]  # the scatter's points are the index's


def test_rewrite_removes_stale_card_files_and_refuses_foreign_ones(tmp_path, cards):
    write_report_html(cards, tmp_path, embed_bytes=0)
    (tmp_path / CARDS_DIR / "9_9.js").write_text(CARD_MARK + "\nstitchkitCards('old',9,9,{});\n")
    small = example_cards(2, (8, 16), stitched=False)
    write_report_html(small, tmp_path, embed_bytes=0)
    assert sorted(p.name for p in (tmp_path / CARDS_DIR).iterdir()) == ["0_0.js", "1_0.js"]
    write_report_html(small, tmp_path)  # small enough to embed: no card files, no folder
    assert not (tmp_path / CARDS_DIR).exists()
    (tmp_path / CARDS_DIR).mkdir()
    (tmp_path / CARDS_DIR / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        write_report_html(small, tmp_path, embed_bytes=0)
    assert (tmp_path / CARDS_DIR / "notes.txt").read_text() == "mine"


def test_mismatched_index_is_refused(tmp_path):
    bad = example_cards(2, (8, 16), stitched=False)
    bad["saes"][1]["index"]["rate"].pop()
    with pytest.raises(InvalidArgumentError, match="15 index 'rate' values"):
        write_report_html(bad, tmp_path)


def test_assets_are_package_data():
    """A wheel carries report_assets/ only where pyproject.toml names its files as package data."""
    tomllib = pytest.importorskip("tomllib")
    conf = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"].get("package-data", {}).get("stitchkit", [])
    for name in ("report.js", "report.css"):
        assert any(fnmatch(f"report_assets/{name}", p) for p in patterns), (name, patterns)


# ---- in the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    with b.launched() as browser:
        yield browser


@pytest.mark.parametrize("embed", [0, 10**9], ids=["card-files", "cards-in-page"])
def test_page_in_chromium(tmp_path, cards, chromium, embed):
    page_path = write_report_html(cards, tmp_path / "out", embed_bytes=embed)
    w = b.Watched(chromium)
    try:
        page = w.open(page_path)
        b.check_index(page, cards)
        b.check_search(page, cards)
        b.check_sort(page, cards)
        for sae, feature in ((2, 299), (3, 15), (0, 3)):  # the second card file, a stitched SAE, the smallest
            b.open_card(page, sae, feature)
            b.check_card(page, cards, sae, feature)
        b.open_card(page, 2, 260)
        b.check_side_by_side(page, cards, 2, 260)
        shots = b.screenshot_dir(tmp_path)
        page.locator("#card-view").screenshot(
            path=str(shots / f"report_html_side_by_side_{embed and 'inline' or 'files'}.png")
        )
        b.check_scatter(page, cards)
        page.screenshot(
            path=str(shots / f"report_html_{embed and 'inline' or 'files'}.png"),
            full_page=True,
        )
        w.check_clean()
    finally:
        w.close()


def test_missing_card_file_is_said_on_the_card(tmp_path, cards, chromium):
    page_path = write_report_html(cards, tmp_path, embed_bytes=0)
    (tmp_path / CARDS_DIR / "2_1.js").unlink()
    w = b.Watched(chromium)
    try:
        page = w.open(page_path)
        page.evaluate("() => window.stitchkit.open(2, 299)")
        page.wait_for_selector('#card-left .card.error[data-feature="299"]')
        assert "report_cards/2_1.js" in page.inner_text("#card-left")
        b.open_card(page, 2, 3)  # another file still loads
        b.check_card(page, cards, 2, 3)
        w.check_clean(allow=("ERR_FILE_NOT_FOUND",))  # the browser logs the missing file
    finally:
        w.close()


def test_a_report_without_cards(tmp_path, cards, chromium):
    """The study's tables and plots alone (no SAE index, no cards): the page still draws them."""
    study = dict(cards["study"], plots=dict(cards["study"]["plots"]))
    study["plots"]["scatter"] = dict(study["plots"]["scatter"], sae=None)  # no SAE to name
    bare = dict(title="study only", written_by="stitchkit", study=study, saes=[], cards={})
    page_path = write_report_html(bare, tmp_path)
    assert not (tmp_path / CARDS_DIR).exists()
    w = b.Watched(chromium)
    try:
        page = w.open(page_path)
        assert b.match_count(page) == 0
        assert page.locator("#tables table").count() == len(cards["study"]["tables"])
        assert page.locator("#scatter").count() == 1 and page.locator("#plot-frontier").count() == 1
        w.check_clean()
    finally:
        w.close()


def test_the_watch_sees_a_request_for_the_network(tmp_path, chromium):
    """The guard the page tests rely on: a request that is not file:// is recorded (and aborted)."""
    page_path = tmp_path / "net.html"
    page_path.write_text('<img src="http://192.0.2.1/x.png"><p>x</p>')
    w = b.Watched(chromium)
    try:
        w.page.goto(page_path.as_uri())
        w.page.wait_for_load_state("load")
        assert w.offline == ["http://192.0.2.1/x.png"]
        with pytest.raises(AssertionError, match="asked the network"):
            w.check_clean()
    finally:
        w.close()


# ---- the toy demo's own report -------------------------------------------------------------------


def test_the_toy_demos_report_in_chromium(tmp_path, chromium):
    """`stitchkit demo --toy` writes report.html beside report.md, with cards for every feature of
    the study's SAEs; offline in Chromium, a card of each SAE shows its contexts with the marked
    token the held-out store's token at that row, and the side-by-side view the cosines of
    results.json (tests/browser.check_demo_report, which scripts/check_report_page.py runs on the
    real demo's output)."""
    from stitchkit.cli import main

    out = tmp_path / "toy"
    assert main(["demo", "--toy", "--out", str(out)]) == 0
    b.check_demo_report(chromium, out, b.screenshot_dir(tmp_path) / "toy_demo_report.png")
