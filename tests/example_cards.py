"""Synthetic card data in the schema write_report_html reads (stitchkit/report_html.py): a width
family of SAEs and a stitched one, every feature with a card whose tokens include text a page must
escape (<script>, &, quotes, newlines, U+2028). For the report page's tests and its size benchmark.

Every number comes from a random.Random seeded by (seed, sae, feature), so a card is the same
whether it is made eagerly or on demand (`lazy=True`: a Mapping that makes each card when read,
for 98,304-feature benchmarks that could not hold every card in memory)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

THRESHOLD = 0.7
VOCAB = [
    "the",
    " cat",
    " sat",
    " on",
    " mat",
    "<script>",
    "</script>",
    "&amp;",
    "a&b",
    '"q"',
    "'s",
    "\n",
    "new\nline",
    "\u2028",
    "\t",
    " ",
    "<!--",
    "-->",
    "\U0001f642",
    "é",
    "<b>bold</b>",
    "x",
    " alpha",
    " beta",
    " gamma",
    "123",
    "#7",
    "novel",
]


def example_cards(
    n_saes: int = 3,
    widths=(8, 16, 32),
    *,
    stitched: bool = True,
    n_top: int = 5,
    n_bands: int = 2,
    per_band: int = 2,
    context: int = 9,
    k_nearest: int = 3,
    seed: int = 0,
    lazy: bool = False,
    with_study: bool = True,
) -> dict:
    """A `cards` dict: `n_saes` family SAEs of `widths` (each paired with the next narrower one),
    plus, when `stitched`, a stitched SAE made of features of the first two, paired with the first."""
    widths = list(widths)[:n_saes]
    saes = [
        dict(name=f"toy-{w}", d_sae=w, kind="family", pair_with=i - 1 if i else None, block=256)
        for i, w in enumerate(widths)
    ]
    if stitched and len(widths) >= 2:
        saes.append(
            dict(name="stitched", d_sae=widths[0] + widths[1] // 2, kind="stitched", pair_with=0, block=256)
        )
    maker = _Maker(
        saes,
        seed,
        dict(n_top=n_top, n_bands=n_bands, per_band=per_band, context=context, k_nearest=k_nearest),
    )
    for s, sae in enumerate(saes):
        rows = [maker.summary(s, f) for f in range(sae["d_sae"])]
        sae["index"] = {
            k: [r[k] for r in rows]
            for k in ("rate", "mean", "class", "max_cos", "nearest", "dmse", "top_token")
        }
    cards = {
        str(s): (_Lazy(maker, s) if lazy else {str(f): maker.card(s, f) for f in range(sae["d_sae"])})
        for s, sae in enumerate(saes)
    }
    out = dict(
        title='stitchkit report: synthetic <cards> & "quotes"',
        written_by="stitchkit",
        saes=saes,
        cards=cards,
        study=_study(saes) if with_study else {"tables": [], "plots": {}},
    )
    return out


class _Lazy(Mapping):
    """One SAE's cards, each made when read."""

    def __init__(self, maker: _Maker, sae: int):
        self.maker, self.sae, self.n = maker, sae, maker.saes[sae]["d_sae"]

    def __getitem__(self, key):
        f = int(key)
        if not 0 <= f < self.n:
            raise KeyError(key)
        return self.maker.card(self.sae, f)

    def __iter__(self):
        return (str(f) for f in range(self.n))

    def __len__(self):
        return self.n


class _Maker:
    def __init__(self, saes: list[dict], seed: int, sizes: dict):
        self.saes, self.seed, self.sizes = saes, seed, sizes

    def _rng(self, s: int, f: int, part: str) -> random.Random:
        return random.Random(f"{self.seed}:{s}:{f}:{part}")

    def summary(self, s: int, f: int) -> dict:
        """The index's fields of feature f of SAE s (what its card says too)."""
        g = self._rng(s, f, "summary")
        sae = self.saes[s]
        out = dict(rate=g.random() ** 3, mean=g.uniform(0.1, 5.0), top_token=g.choice(VOCAB))
        other = sae["pair_with"]
        if other is None:
            return dict(out, **{"class": None, "max_cos": None, "nearest": None, "dmse": None, "cosines": []})
        cosines = sorted((g.uniform(0.05, 0.99) for _ in range(self.sizes["k_nearest"])), reverse=True)
        near = g.sample(
            range(self.saes[other]["d_sae"]), min(self.sizes["k_nearest"], self.saes[other]["d_sae"])
        )
        cls = "novel" if cosines[0] <= THRESHOLD else "reconstruction"
        dmse = g.gauss(-0.05 if cls == "novel" else 0.01, 0.03)
        return dict(
            out,
            **{
                "class": cls,
                "max_cos": cosines[0],
                "nearest": near[0],
                "dmse": dmse,
                "cosines": list(zip(near, cosines)),
            },
        )

    def card(self, s: int, f: int) -> dict:
        info, g, z = self.summary(s, f), self._rng(s, f, "card"), self.sizes
        top_value = info["mean"] * g.uniform(2, 4)
        top = sorted(
            (self._example(g, g.uniform(0.5, 1.0) * top_value) for _ in range(z["n_top"])),
            key=lambda e: -e["value"],
        )
        edges = [10 ** (-3 + 4 * i / 12) for i in range(13)]
        bands = [
            dict(
                lo=edges[3 * b],
                hi=edges[3 * b + 3],
                examples=[
                    self._example(g, g.uniform(edges[3 * b], edges[3 * b + 3])) for _ in range(z["per_band"])
                ],
            )
            for b in range(z["n_bands"])
        ]
        tokens = [info["top_token"]] + g.sample([t for t in VOCAB if t != info["top_token"]], 3)
        has_logits = f % 3 != 0
        card = dict(
            sae=s,
            feature=f,
            rate=info["rate"],
            mean=info["mean"],
            count=g.randrange(1, 5000),
            hist=dict(edges=edges, counts=[g.randrange(0, 400) for _ in range(12)]),
            top=top,
            bands=bands,
            top_tokens=[
                dict(token=t, count=40 - 9 * i, mean=round(g.uniform(0.1, 3), 4))
                for i, t in enumerate(tokens)
            ],
            logits=dict(
                top=[[t, round(g.uniform(0, 2), 4)] for t in VOCAB[:3]],
                bottom=[[t, round(-g.uniform(0, 2), 4)] for t in VOCAB[3:6]],
            )
            if has_logits
            else None,
            logits_note=None if has_logits else "no unembedding: toy activations come from no model",
            pair=self._pair(g, s, info),
            lineage=self._lineage(g, s),
            provenance=self._provenance(g, s, f),
        )
        return card

    def _example(self, g: random.Random, value: float) -> dict:
        n = self.sizes["context"]
        mark = g.randrange(n)
        acts = [round(g.random() * value * 0.6, 4) if g.random() < 0.4 else 0.0 for _ in range(n)]
        acts[mark] = round(value, 4)
        return dict(
            row=g.randrange(10**6),
            value=round(value, 4),
            tokens=[g.choice(VOCAB) for _ in range(n)],
            acts=acts,
            mark=mark,
        )

    def _pair(self, g: random.Random, s: int, info: dict) -> dict | None:
        other = self.saes[s]["pair_with"]
        if other is None:
            return None
        group = None
        swap = g.randrange(20) if g.random() < 0.5 else None
        if swap is not None:
            group = dict(
                parents=g.sample(range(self.saes[other]["d_sae"]), 1),
                children=g.sample(range(self.saes[s]["d_sae"]), 2),
            )
        return {
            "other": other,
            "class": info["class"],
            "max_cos": info["max_cos"],
            "nearest": [dict(feature=n, cos=c) for n, c in info["cosines"]],
            "dmse": info["dmse"],
            "swap_group": swap,
            "group": group,
        }

    def _lineage(self, g: random.Random, s: int) -> list[dict]:
        if self.saes[s]["kind"] != "family":
            return []
        family = [i for i, x in enumerate(self.saes) if x["kind"] == "family"]
        out = []
        for rel, t in (("parent", s - 1), ("child", s + 1)):
            if t in family and g.random() < 0.7:
                out.append(
                    dict(
                        sae=t,
                        feature=g.randrange(self.saes[t]["d_sae"]),
                        cos=g.uniform(0.7, 1.0),
                        relation=rel,
                    )
                )
        return out

    def _provenance(self, g: random.Random, s: int, f: int) -> dict | None:
        if self.saes[s]["kind"] != "stitched":
            return None
        if f == self.saes[s]["d_sae"] - 1:
            return dict(sae=None, name="elsewhere.safetensors", index=f)
        small = self.saes[0]["d_sae"]
        src = 0 if f < small else 1
        return dict(
            sae=src, name=self.saes[src]["name"], index=f if src == 0 else g.randrange(self.saes[1]["d_sae"])
        )


def _study(saes: list[dict]) -> dict:
    """Tables and plots like a study's, on the widest family SAE against its pair."""
    fam = [i for i, s in enumerate(saes) if s["kind"] == "family"]
    big = saes[fam[-1]]
    ix = big["index"]
    family_rows = [
        dict(name=s["name"], d_sae=s["d_sae"], mse=1.0 / (1 + i), l0=5.0 * (1 + i), note='<ok> & "fine"')
        for i, s in enumerate(saes)
    ]
    tables = [
        dict(
            title="The SAE family <held-out>",
            note="MSE: squared error summed over d_in, mean over tokens.",
            columns=[["name", "SAE"], ["d_sae", "features"], ["mse", "MSE"], ["l0", "L0"], ["note", "note"]],
            rows=family_rows,
        ),
        dict(
            title="An undefined cell",
            note=None,
            columns=[["a", "a"], ["b", "b"]],
            rows=[dict(a=float("nan"), b=None)],
        ),
    ]
    plots = dict(
        scatter=dict(
            sae=fam[-1],
            features=list(range(big["d_sae"])),
            max_cos=list(ix["max_cos"]),
            dmse=list(ix["dmse"]),
            novel=[c == "novel" for c in ix["class"]],
            threshold=THRESHOLD,
            title=f"{big['name']} against its pair",
        )
        if big["pair_with"] is not None
        else None,
        interpolation=dict(
            rows=[
                dict(
                    step=i,
                    label="small" if i == 0 else f"+{i} swaps",
                    mse=1.0 / (1 + i),
                    l0=5.0 + i,
                    n_features=8 + i,
                )
                for i in range(6)
            ]
        ),
        frontier=dict(
            points=[
                dict(
                    label=f"lambda {k}",
                    mse=math.exp(-k / 3),
                    l0=3.0 + k,
                    on_frontier=k % 4 != 3,
                    kind="stitched",
                )
                for k in range(8)
            ]
            + [
                dict(label=s["name"], mse=1.0 / (1 + i), l0=5.0 * (1 + i), on_frontier=True, kind="family")
                for i, s in enumerate(saes)
                if s["kind"] == "family"
            ]
        ),
    )
    return dict(tables=tables, plots=plots)
