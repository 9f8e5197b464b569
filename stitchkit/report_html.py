"""report.html: one offline page of a study and its feature cards, written from the card data
(`cards`, the dict the study's card assembly produces: title, study tables and plots, each SAE's
per-feature index, and every feature's card). Reads the dict, writes files; computes nothing.

The page is one file that works from disk (file://) with no network: its CSS and JS
(`report_assets/`) and the data are inlined, and nothing is fetched from elsewhere. The data is
one `<script type="application/json">` element parsed once with JSON.parse (faster than a JS
literal of the same size); every "<" in it is written as \\u003c, and U+2028/U+2029 escaped, so
no token can end the script element or the line.

The page holds each SAE's index (a column per field, floats rounded to INDEX_DIGITS significant
digits: the cards hold the exact numbers), which the page's JS turns into a virtualised table (only
the rows in view are in the DOM), so 98,304 features are searchable and sortable at once.

Cards come on demand. A page opened from disk may not fetch() or XHR its sibling files, but it may
add a `<script src>` naming one, so the cards are written as script files
`report_cards/<sae>_<block>.js` of `block` (256) features each, every one a call
`stitchkitCards(stamp, sae, block, {feature: card, ...})`; a click adds the block's script, and
the card shows when it has run. The stamp (a digest of the page's data) ties the files to the page
they were written with. Where every card together is at most `embed_bytes`, the blocks go into
the page itself instead and there are no card files: a small study is one file.

Plots are drawn by the page's JS, without a plotting library (none to ship, none to fetch): plain
SVG for the interpolation path and the MSE-L0 frontier (tens of points; each point an element, so
the pointer finds it for free), and a <canvas> for dMSE against max cosine (up to one point per
feature: 98,304 SVG elements would take seconds), whose pointer finds the nearest point in a grid
of buckets built once."""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

from .atomic import REPORT_MARK, atomic_write, decided, writes
from .errors import InvalidArgumentError, OutputError
from .tables import cell

CARDS_DIR = "report_cards"  # beside report.html
CARD_MARK = "/* written by stitchkit */"  # the first line of every card file
BLOCK = 256  # features per card file, unless an SAE's entry says otherwise
EMBED_BYTES = 4_000_000  # cards up to this size go into the page; more go to card files
INDEX_DIGITS = 5  # significant digits of the index's floats in the page
INDEX_FLOATS = ("rate", "mean", "max_cos", "dmse")
_OURS = re.compile(r"^\.?\d+_\d+\.js(\.tmp-.*)?$")  # a card file, or one atomic_write left behind


def write_report_html(cards: dict, out_dir: str | Path, *, embed_bytes: int = EMBED_BYTES) -> Path:
    """Write out_dir/report.html (and, when the cards are larger than `embed_bytes` bytes,
    out_dir/report_cards/<sae>_<block>.js) from `cards`; returns the page's path.

    `cards` follows the card schema (see the module doc); `cards["cards"][sae]` may be any
    Mapping from feature (str or int) to card, so a caller can produce cards lazily. Card files
    left by an earlier write that this one does not rewrite are removed; a report_cards folder
    holding any other file is refused (OutputError)."""
    out = Path(out_dir)
    folder = out / CARDS_DIR
    old = decided(lambda: _card_files(folder))
    data = _script_json(page_data(cards))
    stamp = hashlib.sha256(data.encode()).hexdigest()[:16]
    inline, written = _write_blocks(cards, folder, stamp, embed_bytes)
    if writes():
        for name in old - written:
            (folder / name).unlink(missing_ok=True)
        if not written and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    page = _page(
        cards.get("title") or "stitchkit report", data, stamp, inline, "files" if written else "inline"
    )
    return atomic_write(out / "report.html", lambda fh: fh.write(page.encode("utf-8")))


def page_data(cards: dict) -> dict:
    """What the page embeds: the study's tables (cells formatted as report.md formats them),
    plots, and each SAE's index as columns (floats rounded, classes as codes into `classes`)."""
    classes = sorted({c for s in cards["saes"] for c in s["index"]["class"] if c is not None})
    return dict(
        title=cards.get("title") or "stitchkit report",
        written_by=cards.get("written_by"),
        classes=classes,
        digits=INDEX_DIGITS,
        study=_study(cards.get("study") or {}, cards["saes"]),
        saes=[_sae_entry(s, classes) for s in cards["saes"]],
    )


def _sae_entry(sae: dict, classes: list[str]) -> dict:
    ix = sae["index"]
    code = {c: i for i, c in enumerate(classes)}
    index = {k: _rounded(ix[k]) for k in INDEX_FLOATS}
    index["class"] = [-1 if c is None else code[c] for c in ix["class"]]
    index["nearest"] = [None if n is None else int(n) for n in ix["nearest"]]
    index["top_token"] = [str(t) for t in ix["top_token"]]
    for k, v in index.items():
        if len(v) != sae["d_sae"]:
            raise InvalidArgumentError(
                f"write_report_html: SAE {sae['name']!r} has {len(v)} index {k!r} values, "
                f"expected d_sae = {sae['d_sae']}"
            )
    keep = ("name", "d_sae", "kind", "pair_with")
    return dict({k: sae.get(k) for k in keep}, block=int(sae.get("block") or BLOCK), index=index)


def _study(study: dict, saes: list[dict]) -> dict:
    tables = [
        dict(
            title=t["title"],
            columns=[title for _, title in t["columns"]],
            note=t.get("note"),
            rows=[["" if r.get(k) is None else cell(r.get(k)) for k, _ in t["columns"]] for r in t["rows"]],
        )
        for t in study.get("tables") or []
    ]
    plots = dict(study.get("plots") or {})
    sc = plots.get("scatter")
    if sc:  # without the SAE's index (no cards, or sae None) the points are the scatter's own
        s = sc.get("sae")
        plots["scatter"] = _scatter(sc, saes[s] if isinstance(s, int) and 0 <= s < len(saes) else None)
    for key in ("interpolation", "frontier"):
        if plots.get(key):
            plots[key] = _finite(plots[key])
    return dict(tables=tables, plots={k: v for k, v in plots.items() if v})


def _scatter(sc: dict, sae: dict | None) -> dict:
    """The scatter's points; where they are the index's own values (every feature, in order),
    the page takes them from the index instead of holding them twice."""
    out = dict(
        sae=sc["sae"],
        threshold=_num(sc.get("threshold")),
        title=sc.get("title") or "",
        novel="".join("1" if n else "0" for n in sc["novel"]),
    )
    same = (
        sae is not None
        and list(sc["features"]) == list(range(sae["d_sae"]))
        and list(sc["max_cos"]) == list(sae["index"]["max_cos"])
        and list(sc["dmse"]) == list(sae["index"]["dmse"])
    )
    if same:
        return dict(out, from_index=True)
    return dict(
        out,
        features=[int(f) for f in sc["features"]],
        max_cos=_rounded(sc["max_cos"]),
        dmse=_rounded(sc["dmse"]),
    )


def _rounded(xs, digits: int = INDEX_DIGITS) -> list:
    """xs as floats of `digits` significant digits; None and non-finite values as None."""
    fmt = f"{{:.{digits}g}}"
    return [None if x is None or not math.isfinite(x) else float(fmt.format(x)) for x in xs]


def _num(x):
    return x if x is None or not isinstance(x, float) or math.isfinite(x) else None


def _finite(obj):
    """obj (dicts, lists, numbers) with NaN and infinities as None: JSON has no such numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return _num(obj)


def _script_json(obj, *, allow_nan: bool = False) -> str:
    """obj as JSON that is safe inside a <script> element: no "<" (so no "</script>" or "<!--"),
    and no U+2028/U+2029 (line ends to older JS). Only strings can hold them, where the escapes
    mean the same characters."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _blocks(cards: dict) -> Iterator[tuple[str, dict]]:
    """(file name, {feature: card}) for every block of features that has a card."""
    every = cards.get("cards") or {}
    for s, sae in enumerate(cards["saes"]):
        by_feature = _get(every, s) or {}
        size = int(sae.get("block") or BLOCK)
        for b in range(-(-sae["d_sae"] // size)):
            part = {}
            for f in range(b * size, min((b + 1) * size, sae["d_sae"])):
                card = _get(by_feature, f)
                if card is not None:
                    part[str(f)] = card
            if part:
                yield f"{s}_{b}.js", part


def _get(m: Mapping, key: int):
    found = m.get(str(key))
    return m.get(key) if found is None else found


def _block_text(name: str, part: dict, stamp: str) -> str:
    sae, block = name[:-3].split("_")
    # a JS file, not JSON: a card's NaN or Infinity reads as the JS number of that name
    body = _script_json(part, allow_nan=True)
    return f"{CARD_MARK}\nstitchkitCards({json.dumps(stamp)},{sae},{block},{body});\n"


def _write_blocks(cards: dict, folder: Path, stamp: str, embed_bytes: int) -> tuple[list[str], set[str]]:
    """The card blocks to inline in the page (all of them, while their total is at most
    `embed_bytes`), and the names of the card files written (once it is more)."""
    kept: list[tuple[str, str]] = []
    size, written = 0, set()
    for name, part in _blocks(cards):
        text = _block_text(name, part, stamp)
        if not written:
            kept.append((name, text))
            size += len(text.encode("utf-8"))
            if size <= embed_bytes:
                continue
        for n, t in kept if not written else [(name, text)]:
            atomic_write(folder / n, lambda fh, t=t: fh.write(t.encode("utf-8")))
            written.add(n)
        kept = []
    return [t for _, t in kept], written


def _card_files(folder: Path) -> set[str]:
    """The card files an earlier write left in `folder`; an OutputError when it holds others."""
    if not folder.exists():
        return set()
    if not folder.is_dir():
        raise OutputError(
            f"write_report_html: {folder} exists and is not a directory; "
            "the report's card files go there: move it away"
        )
    names = {p.name for p in folder.iterdir()}
    foreign = sorted(n for n in names if not (_OURS.match(n) and _is_card_file(folder / n)))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"write_report_html: {folder} holds files stitchkit did not write ({shown}); stitchkit "
            "writes the report's card files only into its own folder: move them out or choose another"
        )
    return names


def _is_card_file(path: Path) -> bool:
    if path.name.startswith("."):
        return path.is_file()  # a temporary file of an interrupted write: named like ours
    with path.open("rb") as fh:
        return fh.read(len(CARD_MARK)) == CARD_MARK.encode()


def _asset(name: str) -> str:
    text = resources.files(__package__).joinpath("report_assets", name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise OutputError(f"write_report_html: report_assets/{name} would end its element early")
    return text


def _page(title: str, data: str, stamp: str, inline: list[str], mode: str) -> str:
    parts = [
        REPORT_MARK,  # before the doctype, as report.md's first line: it says stitchkit wrote the file
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="stitchkit">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_asset('report.css')}</style>",
        "</head><body>",
        "<noscript>This report draws its tables, plots and feature cards with JavaScript; "
        "turn it on to read them.</noscript>",
        f'<script id="stitchkit-data" type="application/json" data-stamp="{stamp}" data-cards="{mode}">'
        f"{data}</script>",
        f"<script>\n{_asset('report.js')}</script>",
        *(f"<script>{block}</script>" for block in inline),
        "<script>stitchkit.main();</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
