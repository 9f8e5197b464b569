/* stitchkit report page (report_html.py inlines this file into report.html).
   The study's tables and plots, a feature index that puts only the rows in view into the DOM,
   and feature cards that come from report_cards/<sae>_<block>.js script files when first opened
   (a page opened from disk may add a script element naming a sibling file; it may not fetch() one).
   Test hooks: window.stitchkit.ready, #match-count[data-count], window.stitchkit.open(),
   window.stitchkit.lastOpen, .lastFilterMs (search or sort), .scatterPoint(). */
"use strict";
(function () {
  const DATA_EL = document.getElementById("stitchkit-data");
  const STAMP = DATA_EL.dataset.stamp;
  const INLINE = DATA_EL.dataset.cards === "inline";
  const ROW_H = 24;
  const SK = (window.stitchkit = { cards: {}, loaded: {}, waiting: {}, ready: false, readyAt: null,
                                   lastOpen: null, slots: { left: null, right: null } });
  let D = null;

  // ---- cards on demand ------------------------------------------------------------------------
  window.stitchkitCards = function (stamp, sae, block, cards) {
    const key = sae + "_" + block;
    if (stamp !== STAMP) {
      SK.loaded[key] = "stale";
      settle(key, `report_cards/${key}.js was written with another report.html (write the report again)`);
      return;
    }
    const into = SK.cards[sae] || (SK.cards[sae] = {});
    for (const f in cards) into[f] = cards[f];
    SK.loaded[key] = true;
    settle(key, null);
  };

  function settle(key, err) {
    const waiting = SK.waiting[key] || [];
    delete SK.waiting[key];
    for (const w of waiting) {
      const card = SK.cards[w.s] && SK.cards[w.s][w.f];
      if (err) w.reject(new Error(err));
      else if (card) w.resolve(card);
      else w.reject(new Error(`the report has no card for ${saeName(w.s)} #${w.f}`));
    }
  }

  function loadCard(s, f) {
    const have = SK.cards[s] && SK.cards[s][f];
    if (have) return Promise.resolve(have);
    const sae = D.saes[s];
    if (!sae || !(f >= 0 && f < sae.d_sae)) return Promise.reject(new Error(`no feature ${s}:${f} in this report`));
    const key = s + "_" + Math.floor(f / sae.block);
    if (INLINE || SK.loaded[key] === true) return Promise.reject(new Error(`the report has no card for ${sae.name} #${f}`));
    return new Promise((resolve, reject) => {
      const queue = SK.waiting[key] || (SK.waiting[key] = []);
      queue.push({ s, f, resolve, reject });
      if (queue.length > 1) return; // its script is already on the way
      const el = document.createElement("script");
      el.src = `report_cards/${key}.js`;
      el.onerror = () => {
        el.remove();
        settle(key, `could not load report_cards/${key}.js: the card files must stay in the folder ` +
                    "report_cards beside report.html");
      };
      document.head.appendChild(el);
    });
  }

  // ---- formatting -----------------------------------------------------------------------------
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ESC[c]); }
  function fmt(x, digits = 4) {
    if (x === null || x === undefined) return "—";
    if (typeof x !== "number") return esc(x);
    if (Number.isNaN(x)) return "undefined";
    if (Number.isInteger(x)) return String(x);
    const r = Number(x.toPrecision(digits));
    return Math.abs(r) < 1e-3 ? r.toExponential() : String(r);
  }
  // the exact number (the shortest decimal that reads back to the same double), for cosines
  function exact(x) { return x === null || x === undefined ? "—" : String(x); }
  function saeName(s) { return D.saes[s] ? D.saes[s].name : s === null || s === undefined ? "feature" : `SAE ${s}`; }
  function featLink(s, f, extra = "") {
    return `<a class="link feat" data-open="${s},${f}"${extra}>${esc(saeName(s))} #${f}</a>`;
  }

  // ---- layout ---------------------------------------------------------------------------------
  function layout() {
    const total = D.saes.reduce((n, s) => n + s.d_sae, 0);
    const by = D.written_by ? `written by ${esc(D.written_by)} · ` : "";
    document.body.insertAdjacentHTML("afterbegin", `
      <header class="top"><h1>${esc(D.title)}</h1>
        <p class="sub">${by}${D.saes.length} SAEs · ${total} features</p>
        <nav><a href="#study">Study</a><a href="#features">Features</a></nav></header>
      <main>
        <section id="study"><h2>Study</h2><div id="sae-list"></div>
          <div id="plots" class="plots"></div><div id="tables"></div></section>
        <section id="features"><h2>Features</h2>
          <div class="ix-controls">
            <label>SAE <select id="ix-sae"><option value="-1">all</option>${
              D.saes.map((s, i) => `<option value="${i}">${esc(s.name)}</option>`).join("")}</select></label>
            <label>class <select id="ix-class"><option value="">any</option>${
              D.classes.map((c, i) => `<option value="${i}">${esc(c)}</option>`).join("")
            }<option value="-1">none</option></select></label>
            <input id="ix-search" type="search" autocomplete="off"
              placeholder="search: 123 or #123 (feature), a top token, a class (tok:… class:… force one)">
            <span id="match-count" data-count="${total}" data-total="${total}"></span>
          </div>
          <div class="ix"><div class="ix-head" id="ix-head"></div>
            <div id="ix-scroll"><div id="ix-spacer"><div id="ix-rows"></div></div></div></div>
          <div id="card-view"><div id="card-left" class="slot"></div><div id="card-right" class="slot"></div></div>
        </section>
      </main>
      <div id="tip" hidden></div>`);
  }

  // ---- the index ------------------------------------------------------------------------------
  const COLS = [ // key, title, sortable, right-aligned
    ["sae", "SAE", true, false], ["feature", "#", true, true], ["class", "class", true, false],
    ["max_cos", "max cos", true, true], ["nearest", "nearest", false, true], ["dmse", "dMSE", true, true],
    ["rate", "firing rate", true, true], ["mean", "mean", true, true], ["top_token", "top token", true, false],
  ];
  const IX = { n: 0, rowSae: null, rowFeat: null, view: null, sort: null, dir: 1, orders: {}, lower: null };

  function buildIndex() {
    let n = 0;
    for (const s of D.saes) n += s.d_sae;
    IX.n = n;
    IX.rowSae = new Uint16Array(n);
    IX.rowFeat = new Int32Array(n);
    let r = 0;
    D.saes.forEach((s, i) => { for (let f = 0; f < s.d_sae; f++, r++) { IX.rowSae[r] = i; IX.rowFeat[r] = f; } });
    IX.identity = new Int32Array(n).map((_, i) => i);
    IX.view = IX.identity;
    document.getElementById("ix-head").innerHTML = COLS.map(([k, t, sortable, right]) => {
      const r = right ? ' class="r"' : "";
      return sortable ? `<button${r} data-sort="${k}" aria-sort="none">${t}</button>` : `<span${r}>${t}</span>`;
    }).join("");
    const scroll = document.getElementById("ix-scroll");
    let queued = false;
    scroll.addEventListener("scroll", () => {
      if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; renderRows(); }); }
    });
    document.getElementById("ix-head").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-sort]");
      if (!b) return;
      const k = b.dataset.sort;
      IX.dir = IX.sort === k ? -IX.dir : (k === "feature" || k === "sae" || k === "top_token" ? 1 : -1);
      IX.sort = k;
      for (const o of document.querySelectorAll("#ix-head button")) o.setAttribute("aria-sort", "none");
      b.setAttribute("aria-sort", IX.dir > 0 ? "ascending" : "descending");
      filter();
    });
    document.getElementById("ix-rows").addEventListener("click", (e) => {
      const row = e.target.closest(".ix-row");
      if (row) openAndShow(+row.dataset.sae, +row.dataset.feature);
    });
    let timer = 0;
    document.getElementById("ix-search").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(filter, 120);
    });
    document.getElementById("ix-sae").addEventListener("change", filter);
    document.getElementById("ix-class").addEventListener("change", filter);
    filter();
  }

  function value(k, r) {
    const s = IX.rowSae[r], f = IX.rowFeat[r];
    if (k === "sae") return s;
    if (k === "feature") return f;
    return D.saes[s].index[k][f];
  }

  // every row in the sort's order (cached per column and direction); missing values last
  function order() {
    if (!IX.sort) return IX.identity;
    const id = IX.sort + IX.dir;
    if (IX.orders[id]) return IX.orders[id];
    const k = IX.sort, dir = IX.dir, n = IX.n;
    let out;
    if (k === "top_token") {
      const keys = new Array(n);
      for (let r = 0; r < n; r++) keys[r] = value(k, r);
      out = IX.identity.slice().sort((a, b) => (keys[a] < keys[b] ? -dir : keys[a] > keys[b] ? dir : a - b));
    } else {
      const keys = new Float64Array(n);
      for (let r = 0; r < n; r++) {
        const v = value(k, r);
        keys[r] = v === null || v === undefined || (k === "class" && v < 0) ? NaN : v;
      }
      out = IX.identity.slice().sort((a, b) => {
        const x = keys[a], y = keys[b];
        if (x !== x) return y !== y ? a - b : 1;
        if (y !== y) return -1;
        return x === y ? a - b : (x < y ? -dir : dir);
      });
    }
    return (IX.orders[id] = out);
  }

  // terms of the search box, all of which a row must match
  function parseQuery(text) {
    const terms = [];
    for (const raw of text.trim().split(/\s+/)) {
      if (!raw) continue;
      const t = raw.toLowerCase();
      let m;
      if ((m = /^#?(\d+)$/.exec(t))) terms.push({ feature: +m[1] });
      else if (t.startsWith("tok:")) terms.push({ token: t.slice(4) });
      else if (t.startsWith("class:")) terms.push({ cls: classCodes(t.slice(6)) });
      else {
        const codes = classCodes(t);
        terms.push(codes.length ? { cls: codes } : { token: t });
      }
    }
    return terms;
  }
  function classCodes(t) {
    const codes = [];
    D.classes.forEach((c, i) => { if (t && c.toLowerCase().startsWith(t)) codes.push(i); });
    if (t && "none".startsWith(t)) codes.push(-1);
    return codes;
  }

  function filter() {
    const t0 = performance.now();
    const terms = parseQuery(document.getElementById("ix-search").value);
    const saeSel = +document.getElementById("ix-sae").value;
    const clsVal = document.getElementById("ix-class").value;
    const clsSel = clsVal === "" ? null : +clsVal;
    const all = order();
    if (!terms.length && saeSel < 0 && clsSel === null) {
      IX.view = all;
    } else {
      if (terms.some((t) => t.token !== undefined) && !IX.lower)
        IX.lower = D.saes.map((s) => s.index.top_token.map((x) => x.toLowerCase()));
      const out = new Int32Array(all.length);
      let n = 0;
      for (let i = 0; i < all.length; i++) {
        const r = all[i], s = IX.rowSae[r], f = IX.rowFeat[r];
        if (saeSel >= 0 && s !== saeSel) continue;
        const cls = D.saes[s].index.class[f];
        if (clsSel !== null && cls !== clsSel) continue;
        let ok = true;
        for (const t of terms) {
          if (t.feature !== undefined) ok = f === t.feature;
          else if (t.cls !== undefined) ok = t.cls.includes(cls);
          else ok = IX.lower[s][f].includes(t.token);
          if (!ok) break;
        }
        if (ok) out[n++] = r;
      }
      IX.view = out.subarray(0, n);
    }
    const count = document.getElementById("match-count");
    count.dataset.count = IX.view.length;
    SK.lastQuery = document.getElementById("ix-search").value;
    count.textContent = `${IX.view.length} of ${IX.n} features`;
    document.getElementById("ix-spacer").style.height = IX.view.length * ROW_H + "px";
    document.getElementById("ix-scroll").scrollTop = 0;
    renderRows();
    SK.lastFilterMs = performance.now() - t0;
  }

  function renderRows() {
    const scroll = document.getElementById("ix-scroll");
    const top = scroll.scrollTop, h = scroll.clientHeight || 400;
    const start = Math.max(0, Math.floor(top / ROW_H) - 8);
    const end = Math.min(IX.view.length, Math.ceil((top + h) / ROW_H) + 8);
    const sel = SK.slots.left;
    let html = "";
    for (let i = start; i < end; i++) {
      const r = IX.view[i], s = IX.rowSae[r], f = IX.rowFeat[r], ix = D.saes[s].index;
      const cls = ix.class[f] >= 0 ? D.classes[ix.class[f]] : null;
      const on = sel && sel.s === s && sel.f === f ? " sel" : "";
      const tok = ix.top_token[f];
      html += `<div class="ix-row${on}" data-sae="${s}" data-feature="${f}">` +
        `<span>${esc(D.saes[s].name)}</span><span class="r">${f}</span>` +
        `<span class="cls-${cls ? esc(cls) : "none"}">${cls ? esc(cls) : "—"}</span>` +
        `<span class="r">${fmt(ix.max_cos[f])}</span><span class="r">${fmt(ix.nearest[f])}</span>` +
        `<span class="r">${fmt(ix.dmse[f])}</span><span class="r">${fmt(ix.rate[f])}</span>` +
        `<span class="r">${fmt(ix.mean[f])}</span><span class="tt" title="${esc(JSON.stringify(tok))}">${esc(tok)}</span></div>`;
    }
    const rows = document.getElementById("ix-rows");
    rows.style.transform = `translateY(${start * ROW_H}px)`;
    rows.innerHTML = html;
  }

  // ---- cards ----------------------------------------------------------------------------------
  const seq = { left: 0, right: 0 };

  // open (s, f) in a slot; `partner` {s, f, cos} is the card beside it, cos its cosine if known
  SK.open = async function (s, f, slot = "left", partner = null) {
    const t0 = performance.now();
    const n = ++seq[slot];
    const el = document.getElementById("card-" + slot);
    SK.slots[slot] = { s, f, partner };
    if (slot === "left" && !partner) { SK.slots.right = null; seq.right++; document.getElementById("card-right").innerHTML = ""; }
    let html;
    try {
      const card = await loadCard(s, f);
      html = renderCard(card, partner);
    } catch (e) {
      html = `<div class="card error" role="alert" data-sae="${s}" data-feature="${f}">${esc(e.message)}</div>`;
    }
    if (n !== seq[slot]) return null; // a later click took this slot
    el.innerHTML = html;
    document.getElementById("card-view").classList.toggle("two", !!SK.slots.right);
    if (slot === "left") renderRows();
    SK.lastOpen = { sae: s, feature: f, slot, ms: performance.now() - t0 };
    return SK.lastOpen;
  };

  function openAndShow(s, f) {
    SK.open(s, f, "left").then(() => {
      const v = document.getElementById("card-view").getBoundingClientRect();
      if (v.top > window.innerHeight - 80 || v.top < 0) document.getElementById("card-view").scrollIntoView({ block: "start" });
    });
  }

  // a link in a card: the target opens beside the card that holds the link
  function follow(a) {
    const [s, f] = a.dataset.open.split(",").map(Number);
    const cos = a.dataset.cos === undefined ? null : Number(a.dataset.cos);
    const from = a.closest(".slot").id === "card-left" ? SK.slots.left : SK.slots.right;
    if (!from) return;
    const here = { s: from.s, f: from.f, cos };
    SK.open(from.s, from.f, "left", { s, f, cos });
    SK.open(s, f, "right", here);
  }

  function renderCard(c, partner) {
    const sae = D.saes[c.sae] || { name: `SAE ${c.sae}`, kind: "?", d_sae: "?" };
    let h = `<article class="card" data-sae="${c.sae}" data-feature="${c.feature}">` +
      `<header><h3>${esc(sae.name)} <span class="num">#${c.feature}</span></h3>` +
      `<span class="kind">${esc(sae.kind)}, ${sae.d_sae} features</span>` +
      `<button class="close" title="close" data-close>×</button></header>`;
    if (partner) {
      h += partner.cos === null || partner.cos === undefined
        ? `<p class="cos-to">beside ${featLink(partner.s, partner.f)}</p>`
        : `<p class="cos-to" data-cos="${exact(partner.cos)}" data-partner="${partner.s},${partner.f}">` +
          `decoder cosine to ${featLink(partner.s, partner.f)}: <b class="num">${exact(partner.cos)}</b></p>`;
    }
    const pct = c.rate >= 0 && c.rate <= 1 ? ` (${fmt(100 * c.rate, 3)}% of tokens)` : "";
    h += `<dl class="stats"><dt>firing rate</dt><dd class="num" title="${exact(c.rate)}">${fmt(c.rate)}${pct}</dd>` +
      `<dt>mean activation</dt><dd class="num" title="${exact(c.mean)}">${fmt(c.mean)}</dd>` +
      `<dt>tokens it fired on</dt><dd class="num">${fmt(c.count)}</dd></dl>`;
    h += `<h4>Activations (log bins)</h4>${histogram(c.hist)}`;
    const scale = actScale(c);
    h += `<h4>Top contexts</h4>${examples(c.top, scale)}`;
    if (c.bands && c.bands.length) {
      h += "<h4>Samples by activation band</h4>" + c.bands.map((b) =>
        `<div class="band"><div class="range">activation in [${fmt(b.lo)}, ${fmt(b.hi)}]</div>${examples(b.examples, scale)}</div>`).join("");
    }
    h += `<div class="cols"><div>${topTokens(c.top_tokens)}</div><div>${logits(c)}</div></div>`;
    h += pairSection(c) + lineage(c) + provenance(c);
    return h + "</article>";
  }

  function actScale(c) {
    let m = 0;
    const all = (c.top || []).concat(...(c.bands || []).map((b) => b.examples || []));
    for (const ex of all) for (const a of ex.acts || []) if (a > m) m = a;
    return m > 0 ? m : 1;
  }

  function examples(list, scale) {
    if (!list || !list.length) return `<p class="note">none</p>`;
    return list.map((ex) => {
      let toks = "";
      ex.tokens.forEach((t, i) => {
        const a = ex.acts ? ex.acts[i] : null;
        const alpha = a > 0 ? Math.min(1, a / scale) : 0;
        const bg = alpha > 0 ? ` style="background:rgba(255,150,0,${alpha.toFixed(3)})"` : "";
        const mark = i === ex.mark;
        toks += `<span class="tok${sign(t)}${mark ? " mark" : ""}"${mark ? ` data-row="${ex.row}"` : ""}${bg}` +
          ` title="${esc(JSON.stringify(t))}: ${a === null || a === undefined ? "—" : esc(exact(a))}">${esc(t)}</span>`;
      });
      return `<div class="ex" data-row="${ex.row}"><span class="val" title="store row ${ex.row}">${fmt(ex.value)}</span>` +
        `<span class="ctx">${toks}</span></div>`;
    }).join("");
  }

  // a newline or an empty token gets a visible sign from the CSS, outside its text
  function sign(t) { return t === "" ? " empty" : String(t).includes("\n") ? " nl" : ""; }

  function topTokens(list) {
    if (!list || !list.length) return "";
    return `<h4>Top tokens</h4><table class="data"><tr><th>token</th><th>count</th><th>mean act</th></tr>${
      list.map((t) => `<tr><td class="tok${sign(t.token)}">${esc(t.token)}</td><td>${fmt(t.count)}</td><td>${fmt(t.mean)}</td></tr>`).join("")}</table>`;
  }

  function logits(c) {
    if (!c.logits) return `<h4>Logit effects</h4><p class="note">${esc(c.logits_note || "not measured")}</p>`;
    const rows = (l) => l.map(([t, v]) => `<tr><td class="tok${sign(t)}">${esc(t)}</td><td>${fmt(v)}</td></tr>`).join("");
    return `<h4>Logit effects</h4><div class="cols">` +
      `<table class="data"><tr><th>promotes</th><th></th></tr>${rows(c.logits.top || [])}</table>` +
      `<table class="data"><tr><th>suppresses</th><th></th></tr>${rows(c.logits.bottom || [])}</table></div>`;
  }

  function pairSection(c) {
    const p = c.pair;
    if (!p) return "";
    const o = p.other;
    let h = `<h4>Against ${esc(saeName(o))}</h4><dl class="stats">` +
      `<dt>class</dt><dd class="cls-${esc(p.class || "none")}">${esc(p.class || "—")}</dd>` +
      `<dt>max cosine</dt><dd class="num">${exact(p.max_cos)}</dd>` +
      `<dt>dMSE inserted alone</dt><dd class="num" title="${exact(p.dmse)}">${fmt(p.dmse)}</dd>` +
      `<dt>swap group</dt><dd>${p.swap_group === null || p.swap_group === undefined ? "—" : esc(p.swap_group)}</dd></dl>`;
    if (p.nearest && p.nearest.length) {
      h += `<div>nearest in ${esc(saeName(o))}:</div><ul class="links nearest">${p.nearest.map((n) =>
        `<li>${featLink(o, n.feature, ` data-cos="${exact(n.cos)}"`)} cos <span class="num">${exact(n.cos)}</span></li>`).join("")}</ul>`;
    }
    if (p.group) {
      // parents are features of the narrower SAE of the pair, children of the wider
      const small = D.saes[o] && D.saes[c.sae] && D.saes[o].d_sae < D.saes[c.sae].d_sae ? o : c.sae;
      const big = small === o ? c.sae : o;
      const links = (s, l) => (l && l.length ? l.map((f) => featLink(s, f)).join(", ") : "—");
      h += `<div class="group">swap group: parents ${links(small, p.group.parents)}; children ${links(big, p.group.children)}</div>`;
    }
    return h;
  }

  function lineage(c) {
    if (!c.lineage || !c.lineage.length) return "";
    return `<h4>Lineage</h4><ul class="links lineage">${c.lineage.map((e) =>
      `<li>${esc(e.relation)}: ${featLink(e.sae, e.feature, ` data-cos="${exact(e.cos)}"`)} cos <span class="num">${exact(e.cos)}</span></li>`).join("")}</ul>`;
  }

  function provenance(c) {
    const p = c.provenance;
    if (!p) return "";
    const src = p.sae === null || p.sae === undefined ? `${esc(p.name)} #${p.index}` : featLink(p.sae, p.index);
    return `<h4>Provenance</h4><p class="provenance">stitched from ${src}</p>`;
  }

  function histogram(hist) {
    if (!hist || !hist.counts || !hist.counts.length) return `<p class="note">no histogram</p>`;
    // the bins from the first to the last that holds a count
    let lo = hist.counts.findIndex((n) => n > 0), hi = hist.counts.length - 1;
    while (hi > lo && !(hist.counts[hi] > 0)) hi--;
    if (lo < 0) { lo = 0; hi = hist.counts.length - 1; }
    const e = hist.edges.slice(lo, hi + 2), c = hist.counts.slice(lo, hi + 1), W = 360, H = 100, L = 6, B = 16;
    // log bins; a first edge at 0 (a bin of the smallest values) is drawn one bin wide
    const log = e.length > 2 && e.slice(1).every((x) => x > 0) && e[0] >= 0;
    const X = log ? e.map((x) => (x > 0 ? Math.log10(x) : NaN)) : e.slice();
    if (log && !(e[0] > 0)) X[0] = X[1] - (X[X.length - 1] - X[1]) / (X.length - 2);
    const x0 = X[0], x1 = X[X.length - 1] === x0 ? x0 + 1 : X[X.length - 1];
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - 2 * L);
    const top = Math.max(1, ...c);
    let bars = "";
    for (let i = 0; i < c.length; i++) {
      const h = ((H - B - 4) * c[i]) / top, xa = sx(X[i]), xb = sx(X[i + 1]);
      bars += `<rect x="${xa.toFixed(1)}" y="${(H - B - h).toFixed(1)}" width="${Math.max(0.5, xb - xa - 0.5).toFixed(1)}" ` +
        `height="${h.toFixed(1)}" fill="#4c8dd6" data-tip="[${fmt(e[i])}, ${fmt(e[i + 1])}): ${c[i]}"></rect>`;
    }
    return `<svg class="plot hist" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${bars}` +
      `<line class="axis" x1="${L}" x2="${W - L}" y1="${H - B}" y2="${H - B}"></line>` +
      `<text x="${L}" y="${H - 3}">${fmt(e[0])}</text><text x="${W - L}" y="${H - 3}" text-anchor="end">${fmt(e[e.length - 1])}</text>` +
      `<text x="${W / 2}" y="${H - 3}" text-anchor="middle">${log ? "activation (log scale)" : "activation"}</text></svg>`;
  }

  function cardClicks() {
    document.getElementById("card-view").addEventListener("click", (e) => {
      const a = e.target.closest("[data-open]");
      if (a) { e.preventDefault(); follow(a); return; }
      const x = e.target.closest("[data-close]");
      if (!x) return;
      const slot = x.closest(".slot").id === "card-left" ? "left" : "right";
      seq[slot]++;
      if (slot === "left" && SK.slots.right) { // the right card moves over
        const r = SK.slots.right;
        SK.slots.right = null; seq.right++;
        document.getElementById("card-right").innerHTML = "";
        SK.open(r.s, r.f, "left");
      } else {
        SK.slots[slot] = null;
        document.getElementById("card-" + slot).innerHTML = "";
        document.getElementById("card-view").classList.remove("two");
      }
    });
  }

  // ---- tables ---------------------------------------------------------------------------------
  function tables() {
    const saes = `<table class="data"><tr><th>SAE</th><th>features</th><th>kind</th><th>paired with</th></tr>${
      D.saes.map((s) => `<tr><td>${esc(s.name)}</td><td>${s.d_sae}</td><td>${esc(s.kind)}</td><td>${
        s.pair_with === null || s.pair_with === undefined ? "—" : esc(saeName(s.pair_with))}</td></tr>`).join("")}</table>`;
    document.getElementById("sae-list").innerHTML = saes;
    document.getElementById("tables").innerHTML = (D.study.tables || []).map((t) =>
      `<h3 class="table-title">${esc(t.title)}</h3><div class="table-wrap"><table class="data"><tr>${
        t.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>${
        t.rows.map((r) => `<tr>${r.map((v) => `<td>${esc(v)}</td>`).join("")}</tr>`).join("")}</table></div>` +
      (t.note ? `<p class="note">${esc(t.note)}</p>` : "")).join("");
  }

  // ---- plots ----------------------------------------------------------------------------------
  function ticks(lo, hi, log) {
    if (log) {
      const out = [];
      for (let p = Math.floor(Math.log10(lo)); p <= Math.ceil(Math.log10(hi)); p++) {
        const v = 10 ** p;
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      }
      return out.length >= 2 ? out : [lo, hi];
    }
    const span = hi - lo || 1, step0 = span / 5, mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  // the frame of a plot: scales, grid, ticks and labels for [xlo, xhi] x [ylo, yhi]
  function frame(W, H, xr, yr, xlabel, ylabel, logY) {
    const L = 58, R = 12, T = 10, B = 36;
    const pad = (a, b) => (a === b ? [a - 1, b + 1] : [a - (b - a) * 0.04, b + (b - a) * 0.04]);
    const [xlo, xhi] = pad(xr[0], xr[1]);
    const [ylo, yhi] = logY ? [yr[0] / 1.15, yr[1] * 1.15] : pad(yr[0], yr[1]);
    const fy = logY ? Math.log10 : (v) => v;
    const sx = (x) => L + ((x - xlo) / (xhi - xlo)) * (W - L - R);
    const sy = (y) => H - B - ((fy(y) - fy(ylo)) / (fy(yhi) - fy(ylo))) * (H - T - B);
    let g = "";
    for (const v of ticks(xlo, xhi, false)) {
      g += `<line class="grid" x1="${sx(v)}" x2="${sx(v)}" y1="${T}" y2="${H - B}"></line>` +
        `<text x="${sx(v)}" y="${H - B + 13}" text-anchor="middle">${fmt(v, 3)}</text>`;
    }
    for (const v of ticks(ylo, yhi, logY)) {
      g += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(v)}" y2="${sy(v)}"></line>` +
        `<text x="${L - 4}" y="${sy(v) + 3}" text-anchor="end">${fmt(v, 3)}</text>`;
    }
    g += `<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"></line>` +
      `<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"></line>` +
      `<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">${esc(xlabel)}</text>` +
      `<text transform="translate(12 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(ylabel)}${logY ? " (log)" : ""}</text>`;
    return { sx, sy, grid: g, L, R, T, B };
  }

  // an SVG plot of series [{name, color, points: [{x, y, tip, link, hollow}], line, dash}]
  function svgPlot(id, series, xlabel, ylabel, opts = {}) {
    const W = opts.w || 440, H = opts.h || 290;
    const pts = series.flatMap((s) => s.points).filter((p) => p.x !== null && p.y !== null);
    if (!pts.length) return "";
    const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
    const ymin = Math.min(...ys), ymax = Math.max(...ys);
    const logY = opts.logY !== false && ymin > 0 && ymax / ymin > 30;
    const fr = frame(W, H, [Math.min(...xs), Math.max(...xs)], [ymin, ymax], xlabel, ylabel, logY);
    let body = fr.grid;
    for (const s of series) {
      const ps = s.points.filter((p) => p.x !== null && p.y !== null);
      const joined = ps.filter((p) => !p.hollow).slice().sort((a, b) => (s.sortX ? a.x - b.x : 0));
      if (s.line && joined.length > 1) {
        body += `<polyline fill="none" stroke="${s.color}" stroke-width="1.5"${s.dash ? ' stroke-dasharray="5 3"' : ""} points="${
          joined.map((p) => `${fr.sx(p.x).toFixed(1)},${fr.sy(p.y).toFixed(1)}`).join(" ")}"></polyline>`;
      }
      for (const p of ps) {
        body += `<circle class="pt" r="4" cx="${fr.sx(p.x).toFixed(1)}" cy="${fr.sy(p.y).toFixed(1)}" ` +
          `fill="${p.hollow ? "#fff" : s.color}" stroke="${s.color}"${p.link ? ` data-link="${esc(p.link)}"` : ""} ` +
          `data-tip="${esc(p.tip)}"></circle>`;
      }
    }
    const legend = series.length > 1 ? `<div class="legend">${series.map((s) => `<i style="background:${s.color}"></i>${esc(s.name)}`).join("")}</div>` : "";
    return `<svg id="${id}" class="plot" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${body}</svg>${legend}`;
  }

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

  function interpolationPlots(ip) {
    const rows = ip.rows || [];
    const pt = (r, i, x) => ({ x, y: r.mse, link: `interp:${i}`,
      tip: `${r.label}\nstep ${r.step} · ${r.n_features} features\nMSE ${fmt(r.mse)} · L0 ${fmt(r.l0)}` });
    const a = svgPlot("plot-interp-step", [{ name: "path", color: COLORS[0], line: true, points: rows.map((r, i) => pt(r, i, r.step)) }],
      "step", "MSE", { w: 380 });
    const b = svgPlot("plot-interp-l0", [{ name: "path", color: COLORS[2], line: true, points: rows.map((r, i) => pt(r, i, r.l0)) }],
      "L0", "MSE", { w: 380 });
    return `<figure><figcaption>Interpolation path: MSE against step and against L0</figcaption>` +
      `<div class="cols">${a}${b}</div></figure>`;
  }

  // a kind with points on the frontier: those joined, the others hollow; a kind with none (the
  // family, say): its own curve, dashed
  function frontierPlot(fr) {
    const kinds = [...new Set(fr.points.map((p) => p.kind))];
    const series = kinds.map((k, i) => {
      const pts = fr.points.filter((p) => p.kind === k), mixed = pts.some((p) => p.on_frontier);
      return { name: k, color: COLORS[(i + 3) % COLORS.length], line: true, sortX: true, dash: !mixed,
        points: pts.map((p) => ({ x: p.l0, y: p.mse, hollow: mixed && !p.on_frontier,
          tip: `${p.label} (${p.kind})\nL0 ${fmt(p.l0)} · MSE ${fmt(p.mse)}${mixed && !p.on_frontier ? "\nbeaten on both axes" : ""}` })) };
    });
    return `<figure><figcaption>MSE-L0 frontier (solid: the frontier; hollow: beaten on both axes; dashed: a kind with no point on it)</figcaption>` +
      `${svgPlot("plot-frontier", series, "L0", "MSE")}</figure>`;
  }

  // dMSE against max cosine: one point per feature on a canvas; the pointer finds the nearest
  function scatterPlot(sc) {
    const s = sc.sae, ix = D.saes[s] ? D.saes[s].index : null; // no index: a report without cards
    const feats = sc.from_index ? null : sc.features;
    const X = sc.from_index ? ix.max_cos : sc.max_cos, Y = sc.from_index ? ix.dmse : sc.dmse;
    const n = X.length, W = 560, H = 340;
    const keep = [];
    for (let i = 0; i < n; i++) if (X[i] !== null && Y[i] !== null) keep.push(i);
    if (!keep.length) return;
    let xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
    for (const i of keep) { xlo = Math.min(xlo, X[i]); xhi = Math.max(xhi, X[i]); ylo = Math.min(ylo, Y[i]); yhi = Math.max(yhi, Y[i]); }
    if (sc.threshold !== null && sc.threshold !== undefined) { xlo = Math.min(xlo, sc.threshold); xhi = Math.max(xhi, sc.threshold); }
    ylo = Math.min(ylo, 0); yhi = Math.max(yhi, 0);
    const other = ix ? D.saes[s].pair_with : null;
    const xlabel = `max decoder cosine to ${other === null || other === undefined ? "the other SAE" : saeName(other)}`;
    const fr = frame(W, H, [xlo, xhi], [ylo, yhi], xlabel, "dMSE inserted alone", false);
    const fig = document.createElement("figure");
    fig.innerHTML = `<figcaption>${esc(sc.title || "dMSE against max cosine")}</figcaption>` +
      `<div class="canvas-wrap" style="width:${W + 2}px"><svg class="plot" width="${W}" height="${H}" style="border:0">${fr.grid}` +
      `<line class="axis" x1="${fr.L}" x2="${W - fr.R}" y1="${fr.sy(0)}" y2="${fr.sy(0)}"></line>` +
      (sc.threshold !== null && sc.threshold !== undefined ? `<line x1="${fr.sx(sc.threshold)}" x2="${fr.sx(sc.threshold)}" y1="${fr.T}" y2="${H - fr.B}" stroke="#000" stroke-dasharray="4 3"></line>` : "") +
      `</svg><canvas id="scatter" class="overlay" width="${W}" height="${H}" data-hover=""></canvas></div>` +
      `<div class="legend"><i style="background:var(--novel)"></i>novel<i style="background:var(--recon)"></i>reconstruction · ${keep.length} features${ix ? " · click a point to open its card" : ""}</div>`;
    document.getElementById("plots").prepend(fig);
    const canvas = fig.querySelector("canvas");
    const dpr = window.devicePixelRatio || 1;
    canvas.width = W * dpr; canvas.height = H * dpr; canvas.style.width = W + "px"; canvas.style.height = H + "px";
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    const px = new Float32Array(n), py = new Float32Array(n);
    for (const i of keep) { px[i] = fr.sx(X[i]); py[i] = fr.sy(Y[i]); }
    function draw(hot) {
      ctx.clearRect(0, 0, W, H);
      const alpha = keep.length > 5000 ? 0.3 : 0.6, size = keep.length > 5000 ? 2 : 3;
      for (const novel of ["0", "1"]) {
        ctx.fillStyle = novel === "1" ? `rgba(31,119,180,${alpha})` : `rgba(214,39,40,${alpha})`;
        for (const i of keep) if (sc.novel[i] === novel) ctx.fillRect(px[i] - size / 2, py[i] - size / 2, size, size);
      }
      if (hot >= 0) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(px[hot], py[hot], 6, 0, 2 * Math.PI); ctx.stroke(); }
    }
    draw(-1);
    // buckets of CELL x CELL pixels, each listing its points (a counting sort), for the pointer
    const CELL = 8, cw = Math.ceil(W / CELL) + 1, ch = Math.ceil(H / CELL) + 1;
    const start = new Int32Array(cw * ch + 1), members = new Int32Array(keep.length);
    const cellOf = (i) => Math.floor(py[i] / CELL) * cw + Math.floor(px[i] / CELL);
    for (const i of keep) start[cellOf(i) + 1]++;
    for (let c = 0; c < cw * ch; c++) start[c + 1] += start[c];
    const fill = start.slice(0, cw * ch);
    for (const i of keep) members[fill[cellOf(i)]++] = i;
    function nearest(x, y) {
      let best = -1, bd = 7 * 7;
      const cx = Math.floor(x / CELL), cy = Math.floor(y / CELL);
      for (let gy = cy - 1; gy <= cy + 1; gy++) for (let gx = cx - 1; gx <= cx + 1; gx++) {
        if (gx < 0 || gy < 0 || gx >= cw || gy >= ch) continue;
        const c = gy * cw + gx;
        for (let k = start[c]; k < start[c + 1]; k++) {
          const i = members[k], d = (px[i] - x) ** 2 + (py[i] - y) ** 2;
          if (d < bd) { bd = d; best = i; }
        }
      }
      return best;
    }
    const tip = document.getElementById("tip");
    const featOf = (i) => (feats ? feats[i] : i);
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect(), i = nearest(e.clientX - r.left, e.clientY - r.top);
      canvas.dataset.hover = i < 0 ? "" : String(featOf(i));
      draw(i);
      if (i < 0) { tip.hidden = true; return; }
      const f = featOf(i), cls = sc.novel[i] === "1" ? "novel" : "reconstruction";
      tip.textContent = `${saeName(s)} #${f} (${cls})\nmax cos ${fmt(X[i])} · dMSE ${fmt(Y[i])}` +
        (ix ? `\ntop token ${JSON.stringify(ix.top_token[f])}` : "");
      showTip(e);
    });
    canvas.addEventListener("mouseleave", () => { tip.hidden = true; canvas.dataset.hover = ""; draw(-1); });
    canvas.addEventListener("click", (e) => {
      const r = canvas.getBoundingClientRect(), i = nearest(e.clientX - r.left, e.clientY - r.top);
      if (i >= 0 && ix) openAndShow(s, featOf(i));
    });
    // the css pixel of feature f's point, relative to the canvas (for tests)
    SK.scatterPoint = (f) => { const i = feats ? feats.indexOf(f) : f; return i < 0 ? null : [px[i], py[i]]; };
  }

  function showTip(e) {
    const tip = document.getElementById("tip");
    tip.hidden = false;
    const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
    tip.style.left = x + "px";
    tip.style.top = e.clientY + 14 + "px";
  }

  function tips() {
    let hot = [];
    document.addEventListener("mouseover", (e) => {
      const t = e.target.closest && e.target.closest("[data-tip]");
      for (const h of hot) h.classList.remove("hot");
      hot = [];
      const tip = document.getElementById("tip");
      if (!t) { if (e.target.id !== "scatter") tip.hidden = true; return; }
      tip.textContent = t.dataset.tip;
      showTip(e);
      if (t.dataset.link) {
        hot = [...document.querySelectorAll(`[data-link="${CSS.escape(t.dataset.link)}"]`)];
        for (const h of hot) h.classList.add("hot");
      }
    });
  }

  function plots() {
    const p = D.study.plots || {};
    const box = document.getElementById("plots");
    let html = "";
    if (p.interpolation && p.interpolation.rows && p.interpolation.rows.length) html += interpolationPlots(p.interpolation);
    if (p.frontier && p.frontier.points && p.frontier.points.length) html += frontierPlot(p.frontier);
    box.insertAdjacentHTML("beforeend", html);
    if (p.scatter) scatterPlot(p.scatter);
  }

  function fail(where, e) {
    console.error(`stitchkit report: ${where}:`, e);
    document.body.insertAdjacentHTML("afterbegin", `<p class="card error" role="alert">This report could not draw its ${esc(where)}: ${esc(e.message)}</p>`);
  }

  SK.main = function () {
    try {
      D = JSON.parse(DATA_EL.textContent);
      layout();
      buildIndex();
      cardClicks();
      tips();
    } catch (e) { fail("index", e); return; }
    SK.ready = true;
    SK.readyAt = performance.now();
    document.documentElement.dataset.ready = "1";
    setTimeout(() => {
      try { tables(); plots(); } catch (e) { fail("study", e); }
      SK.drawnAt = performance.now();
      document.documentElement.dataset.drawn = "1";
    }, 0);
  };
})();
