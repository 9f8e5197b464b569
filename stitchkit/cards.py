"""Feature cards, as data: what a researcher looks at to judge one feature, for every feature of a
study's SAEs (the family and the final Frankenstein SAE). `feature_cards(result, store)` returns
one JSON-able dict; report_html.py is a view of it (report.html), and nothing here formats text.

Where each part comes from:
- firing rate, mean activation (over the tokens it fires on), histogram, top rows and band samples:
  the study's held-out pass (measure.cards.FeatureCards, `StudyResult.card_stats`), exact;
- contexts: each example row's window of tokens in its text (data.store: token ids, text index,
  position per row), each token's activation of the feature recomputed from the store's rows
  (the marked token's value is the pass's own);
- the tokens it fires on most: counted over its top rows and band samples (not over every token:
  the pass keeps no per-token table, which would be features x vocabulary);
- logit effects: W_dec . W_U where the caller gives token directions (`token_directions`, e.g. the
  unembedding's columns); a model without an unembedding (the default embedding model) gets the
  caller's stand-in and its note, or none and a note saying so;
- against the other SAE of its pair (the next narrower SAE of the family; the narrowest SAE's
  pair is the next wider one, without classes): class at the study's threshold, max cosine, the
  k nearest features by decoder cosine (stitch.similarity.nearest_features, exact fp32), dMSE
  inserted alone (every adjacent pair's insertion pass, `StudyResult.pair_features`), swap group;
- lineage: its parents and children across the width ladder (the study's Lineage links);
- provenance, for the Frankenstein SAE: the family SAE and index each feature came from.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch

from .errors import InvalidArgumentError
from .stitch.similarity import nearest_features

CARD_BLOCK = 256  # features per card file of the HTML view (report_html.py)
NO_DIRECTIONS = "no token directions given: logit effects (W_dec . W_U) need the model's unembedding"


def feature_cards(
    result,
    store=None,
    *,
    k_nearest: int = 5,
    top: int = 10,
    before: int = 8,
    after: int = 4,
    token_directions: torch.Tensor | None = None,
    token_names=None,
    logits_note: str | None = None,
    title: str | None = None,
    study: dict | None = None,
) -> dict:
    """The cards of every feature of `result`'s SAEs (a StudyResult run with config.cards > 0).

    store: the held-out ActivationStore the study streamed (its rows are the cards' rows), with
    contexts (ActivationStore.has_contexts) for token windows; None or a store without contexts
    gives cards without windows (each example then shows its row only). k_nearest: nearest
    features listed per card; top: top examples per card (at most config.cards). before/after:
    tokens of context on each side of the firing token. token_directions [vocab, d_in] and
    token_names (a callable ids -> strings): the directions logit effects are taken against
    (W_U^T for a language model), with `logits_note` saying what they are. study: the view's
    tables and plots (report.study_view(results.json's dict)); title: the page's title.
    """
    if not result.card_stats:
        raise InvalidArgumentError(
            "feature_cards: the study collected no card statistics (run it with StudyConfig(cards=k), k > 0)"
        )
    saes = [s for s, _ in result.card_stats]
    stats = [st for _, st in result.card_stats]
    family = list(result.saes)
    names = _TokenNames(store, token_names)
    contexts = _Contexts(store, before, after) if store is not None else None

    by_large = {pf.large: pf for pf in result.pair_features}
    in_family = [any(s is f for f in family) for s in saes]
    pair_of = {}
    for i in range(len(saes)):
        if not in_family[i]:
            pair_of[i] = None  # a stitched SAE: provenance instead
        elif i > 0:
            pair_of[i] = i - 1
        else:
            pair_of[i] = 1 if len(family) > 1 else None
    nearest = {i: nearest_features(saes[i], saes[j], k_nearest) for i, j in pair_of.items() if j is not None}
    lineage = _lineage_events(result.lineage)
    logits = _logits(saes, token_directions, names) if token_directions is not None else None

    out_saes, cards = [], {}
    for i, (sae, st) in enumerate(zip(saes, stats)):
        pf = by_large.get(i)
        group_of, groups = _groups(pf)
        examples = _examples(sae, st, top, contexts, names)
        F = sae.d_sae
        rate, mean = st.firing_rate.tolist(), _nums(st.mean_activation.tolist())
        count, hist = st.count.tolist(), _Hist(st)
        cls = [None] * F
        mc = [None] * F
        near1 = [None] * F
        dmse = [None] * F
        if pf is not None:
            c = pf.classification
            cls = ["novel" if n else "reconstruction" for n in c.novel.tolist()]
            mc = _nums(c.max_cos.tolist())
            dmse = _nums(pf.delta_mse.tolist())
        if i in nearest:
            near1 = nearest[i].indices[:, 0].tolist()
            if pf is None:
                mc = _nums(nearest[i].values[:, 0].tolist())
        top_token = [ex["top"][0]["tokens"][ex["top"][0]["mark"]] if ex["top"] else "" for ex in examples]
        out_saes.append(
            dict(
                name=sae.name,
                d_sae=F,
                kind="family" if in_family[i] else "stitched",
                pair_with=pair_of[i],
                block=CARD_BLOCK,
                index=dict(rate=rate, mean=mean, **{"class": cls}, max_cos=mc, nearest=near1, dmse=dmse,
                           top_token=top_token),  # fmt: skip
            )
        )
        prov = None if in_family[i] else _provenance(sae, saes)
        level = i if in_family[i] else None  # the family comes first in card_stats, in order
        if i in nearest:
            nn_idx, nn_cos = nearest[i].indices.tolist(), nearest[i].values.tolist()
        mine = {}
        for j in range(F):
            card = dict(
                sae=i,
                feature=j,
                rate=rate[j],
                mean=mean[j],
                count=count[j],
                hist=hist(j),
                top=examples[j]["top"],
                bands=examples[j]["bands"],
                top_tokens=_top_tokens(examples[j]),
                logits=logits[i][j] if logits is not None else None,
                logits_note=logits_note or NO_DIRECTIONS,
                pair=None,
                lineage=lineage.get((level, j), []),
                provenance=prov[j] if prov is not None else None,
            )
            if pair_of[i] is not None:
                g = group_of.get(j)
                card["pair"] = dict(
                    other=pair_of[i],
                    **{"class": cls[j]},
                    max_cos=mc[j],
                    nearest=[dict(feature=f, cos=v) for f, v in zip(nn_idx[j], nn_cos[j])],
                    dmse=dmse[j],
                    swap_group=g,
                    group=groups[g] if g is not None else None,
                )
            mine[str(j)] = card
        cards[str(i)] = mine
    study = study or dict(tables=[], plots=dict(scatter=None, interpolation=None, frontier=None))
    scatter = study.get("plots", {}).get("scatter")
    if scatter is not None and scatter.get("sae") is None:  # the headline large SAE's features
        scatter["sae"] = next(i for i, s in enumerate(saes) if s is result.large)
    return dict(
        title=title or "stitchkit report",
        written_by="stitchkit",
        study=study,
        saes=out_saes,
        cards=cards,
    )


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _nums(xs: list[float]) -> list[float | None]:
    """Floats for JSON: None where not finite (a mean of a feature that never fired)."""
    return [_num(x) for x in xs]


class _Hist:
    """Each feature's histogram as bins with both edges: the underflow bin from 0, the overflow
    bin up to the feature's largest value (or one more bin width where it is empty)."""

    def __init__(self, st):
        self.inner = [float(e) for e in st.hist_edges.tolist()]
        self.step = self.inner[-1] / self.inner[-2] if len(self.inner) > 1 else 10.0
        self.top, self.count, self.hist = st.top_values[:, 0].tolist(), st.count.tolist(), st.hist.tolist()

    def __call__(self, j: int) -> dict:
        top = self.top[j] if self.count[j] else float("nan")
        last = top if math.isfinite(top) and top >= self.inner[-1] else self.inner[-1] * self.step
        return dict(edges=[0.0] + self.inner + [last], counts=self.hist[j])


def _groups(pf) -> tuple[dict[int, int], list[dict]]:
    """child feature -> its swap group's index, and each group's parents and children."""
    if pf is None:
        return {}, []
    group_of, groups = {}, []
    for g, grp in enumerate(pf.groups):
        groups.append(dict(parents=grp.parents.tolist(), children=grp.children.tolist()))
        for c in grp.children.tolist():
            group_of[c] = g
    return group_of, groups


def _lineage_events(lin) -> dict[tuple[int, int], list[dict]]:
    """(level, feature) -> its links to the SAEs beside it on the ladder."""
    out: dict[tuple[int, int], list[dict]] = defaultdict(list)
    if lin is None:
        return out
    for level, r in enumerate(lin.rungs):  # rung `level`: SAE level (parents) and level+1 (children)
        for c, p, cs in zip(r.child.tolist(), r.parent.tolist(), r.cos.tolist()):
            out[(level + 1, c)].append(dict(sae=level, feature=p, cos=cs, relation="parent"))
            out[(level, p)].append(dict(sae=level + 1, feature=c, cos=cs, relation="child"))
    return out


def _provenance(sae, saes) -> list[dict]:
    by_name = {s.name: i for i, s in enumerate(saes)}
    prov = sae.provenance
    return [dict(sae=by_name.get(name), name=name, index=idx) for name, idx in prov.entries()]


def _logits(saes, directions: torch.Tensor, names, k: int = 5) -> list[list[dict]]:
    """Per SAE, per feature: the k tokens whose directions the decoder row raises most and least
    (W_dec . directions^T), in chunks of features (a [chunk, vocab] product at a time)."""
    from .ops.dispatch import rows_per_chunk

    out = []
    for sae in saes:
        d = directions.float().to(sae.W_dec.device)
        step = rows_per_chunk(4 * d.shape[0], sae.W_dec.device)
        rows = []
        for s in range(0, sae.d_sae, step):
            w = sae.W_dec[s : s + step].detach().float() @ d.t()
            hi, lo = w.topk(k, dim=1), (-w).topk(k, dim=1)
            ids = torch.cat([hi.indices, lo.indices], 1)
            words = names(ids.flatten().tolist())
            for r in range(w.shape[0]):
                ws = words[r * 2 * k : (r + 1) * 2 * k]
                top = [[t, float(v)] for t, v in zip(ws[:k], hi.values[r].tolist())]
                bottom = [[t, -float(v)] for t, v in zip(ws[k:], lo.values[r].tolist())]
                rows.append(dict(top=top, bottom=bottom))
        out.append(rows)
    return out


def _top_tokens(ex: dict, k: int = 8) -> list[dict]:
    """The firing tokens among a card's examples: count and mean activation, most frequent first."""
    seen: Counter = Counter()
    total: dict[str, float] = defaultdict(float)
    for e in ex["top"] + [e for b in ex["bands"] for e in b["examples"]]:
        t = e["tokens"][e["mark"]]
        seen[t] += 1
        total[t] += e["value"]
    return [dict(token=t, count=n, mean=total[t] / n) for t, n in seen.most_common(k)]


class _TokenNames:
    """Token ids -> strings: the caller's function, else the store's tokenizer (offline), else
    "[id]"; cached."""

    def __init__(self, store, fn):
        self.fn, self.store, self.cache = fn, store, {}

    def __call__(self, ids: list[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self.cache})
        if missing:
            for i, s in zip(missing, self._lookup(missing)):
                self.cache[i] = s
        return [self.cache[i] for i in ids]

    def _lookup(self, ids: list[int]) -> list[str]:
        if self.fn is not None:
            return list(self.fn(ids))
        tok = getattr(self.store, "tokenizer", None)
        if tok:
            from .data.lens import token_strings

            return token_strings(tok, ids)
        return [f"[{i}]" for i in ids]


class _Contexts:
    """Windows of tokens around store rows, and the store's activations at any rows."""

    def __init__(self, store, before: int, after: int):
        self.store, self.before, self.after = store, before, after
        self.has = bool(getattr(store, "has_contexts", False))
        self._x = None

    def windows(self, rows: list[int]):
        if not self.has:
            return None
        return self.store.windows(torch.tensor(rows, dtype=torch.int64), self.before, self.after)

    def activations(self, rows: torch.Tensor) -> torch.Tensor:
        """The store's rows `rows` [m, d_in] (fp32): the whole held-out store is read once, as
        the study read it."""
        if self._x is None:
            self._x = torch.cat(list(self.store.batches(shuffle=False))).float()
        return self._x[rows]


def _examples(sae, st, top: int, contexts: _Contexts | None, names: _TokenNames) -> list[dict]:
    """Per feature: {"top": [example...], "bands": [{"lo", "hi", "examples"}...]}, each example
    {"row", "value", "tokens", "acts", "mark"}."""
    F = sae.d_sae
    top_rows = st.top_rows[:, :top]
    top_vals = st.top_values[:, :top]
    items = []  # (feature, where, row, value): where = -1 for top, else band index
    for j in range(F):
        for r, v in zip(top_rows[j].tolist(), top_vals[j].tolist()):
            if r >= 0:
                items.append((j, -1, r, v))
        for b in range(st.band_rows.shape[1]):
            for r, v in zip(st.band_rows[j, b].tolist(), st.band_values[j, b].tolist()):
                if r >= 0:
                    items.append((j, b, r, v))
    wins = contexts.windows([it[2] for it in items]) if contexts is not None and items else None
    acts = _window_acts(sae, items, wins, contexts) if wins is not None else None
    n_bands = st.band_rows.shape[1]
    lo, hi = st.band_lo.tolist(), st.band_hi.tolist()
    out = [
        dict(top=[], bands=[dict(lo=_num(lo[j][b]), hi=_num(hi[j][b]), count=int(st.band_count[j, b]),
                                 examples=[]) for b in range(n_bands)])  # fmt: skip
        for j in range(F)
    ]
    all_ids = [t for w in (wins or []) for t in w.token_ids.tolist()]
    words = dict(zip(all_ids, names(all_ids))) if all_ids else {}
    for n, (j, where, r, v) in enumerate(items):
        if wins is not None:
            w = wins[n]
            tokens = [words[t] for t in w.token_ids.tolist()]
            a = acts[n]
            a[w.mark] = v  # the pass's own value at the firing token
            ex = dict(row=r, value=v, tokens=tokens, acts=a, mark=int(w.mark))
        else:
            ex = dict(row=r, value=v, tokens=[f"row {r}"], acts=[v], mark=0)
        (out[j]["top"] if where < 0 else out[j]["bands"][where]["examples"]).append(ex)
    return out


def _window_acts(sae, items, wins, contexts: _Contexts) -> list[list[float]]:
    """Each example's feature value at every token of its window, from the store's rows, computed
    per chunk of features (SAE.encode_features on the union of their windows' rows)."""
    by_feature: dict[int, list[int]] = defaultdict(list)
    for n, it in enumerate(items):
        by_feature[it[0]].append(n)
    out: list[list[float]] = [[] for _ in items]
    feats = sorted(by_feature)
    chunk = 64
    with torch.no_grad():
        for s in range(0, len(feats), chunk):
            fs = feats[s : s + chunk]
            ns = [n for f in fs for n in by_feature[f]]
            rows = torch.cat([wins[n].rows for n in ns])
            uniq, inv = torch.unique(rows, return_inverse=True)
            x = contexts.activations(uniq).to(sae.device, sae.dtype)
            vals = sae.encode_features(x, torch.tensor(fs, device=sae.device)).float().cpu()
            col = {f: c for c, f in enumerate(fs)}
            at = 0
            for n in ns:
                m = len(wins[n].rows)
                out[n] = vals[inv[at : at + m], col[items[n][0]]].tolist()
                at += m
    return out
