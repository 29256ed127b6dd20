// The matryoshka demo page: one query, searched at a chosen dimension and at full size, side by side.
// Plain JS, no libraries: the page is served from the package and must work offline.
"use strict";

const state = { info: null, dims: [], dim: null, codec: "float32", model: null, query: "", last: null, inflight: null };
const $ = (id) => document.getElementById(id);
const SERIES_COLORS = ["#2563eb", "#c2410c", "#16a34a", "#9333ea", "#0891b2", "#b45309", "#db2777", "#4b5563"];

function apiKey() { return sessionStorage.getItem("matryoshka-api-key"); }

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  const init = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  if (body !== undefined && state.inflight) state.inflight.abort();
  const controller = new AbortController();
  if (body !== undefined) state.inflight = controller;
  init.signal = controller.signal;
  const response = await fetch(path, init);
  if (response.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) { sessionStorage.setItem("matryoshka-api-key", key); return api(path, body); }
  }
  const data = await response.json();
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function formatBytes(n) {
  const fmt = (v, unit) => (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + " " + unit;
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return fmt(n / 1024, "KiB");
  if (n < 1024 * 1024 * 1024) return fmt(n / 1024 / 1024, "MiB");
  return fmt(n / 1024 / 1024 / 1024, "GiB");
}

function splitId(id) {
  // WordNet ids look like "bank, depository financial institution (n08420278)".
  const m = /^(.*) \(([nvasr]\d{8})\)$/.exec(id);
  return m ? { title: m[1], sid: m[2] } : { title: id, sid: "" };
}

function hammingBits(score, dim) {
  // A binary stage scores cos(pi * h / dim) for h differing sign bits (the embedded index and pgvector alike).
  return Math.round((Math.acos(Math.max(-1, Math.min(1, score))) * dim) / Math.PI);
}

function scoreText(hit, side) {
  if (side.codec !== "binary") return { text: hit.score.toFixed(3), title: `cosine similarity of the ${side.dim}-dim vectors` };
  const bits = hammingBits(hit.score, side.dim);
  return {
    text: `${bits}/${side.dim} bits`,
    title: `Hamming distance: ${bits} of the ${side.dim} sign bits differ from the query's (score cos(π·${bits}/${side.dim}) = ${hit.score.toFixed(3)})`,
  };
}

function renderHits(list, side, otherIds) {
  list.replaceChildren();
  for (const hit of side.hits) {
    const li = document.createElement("li");
    if (otherIds.has(hit.id)) li.classList.add("same");
    const { title, sid } = splitId(hit.id);
    const score = document.createElement("span");
    score.className = "score";
    const shown = scoreText(hit, side);
    score.textContent = shown.text;
    score.title = shown.title;
    const t = document.createElement("span");
    t.className = "title";
    t.textContent = title;
    li.append(score, t);
    if (sid) {
      const s = document.createElement("span");
      s.className = "sid";
      s.textContent = sid;
      li.append(s);
    }
    list.append(li);
    if (hit.text) {
      // Long texts (abstracts, passages) show three lines, with a button to see the rest.
      const g = document.createElement("span");
      g.className = "gloss clamped";
      g.textContent = hit.text;
      li.append(g);
      if (g.scrollHeight > g.clientHeight + 1) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "more";
        more.textContent = "more";
        more.setAttribute("aria-expanded", "false");
        more.addEventListener("click", () => {
          const open = g.classList.toggle("clamped") === false;
          more.textContent = open ? "less" : "more";
          more.setAttribute("aria-expanded", String(open));
        });
        li.append(more);
      }
    }
  }
}

function scoreNote(side, k) {
  // What the numbers on one side are, and when they cannot order the hits.
  if (side.codec === "float32" || side.codec === "float16") return `Scores: cosine similarity at ${side.dim} dimensions.`;
  if (side.codec === "int8") return `Scores: cosine similarity estimated from int8 codes of ${side.dim} dimensions.`;
  const bits = side.hits.map((h) => hammingBits(h.score, side.dim));
  const best = Math.min(...bits);
  const tied = bits.filter((b) => b === best).length;
  let note = `Scores: bits that differ from the query's among ${side.dim} sign bits (Hamming distance), not a cosine.`;
  if (tied > 1) note += ` ${tied} of these ${k} hits tie at ${best} bits, so their order among themselves says nothing.`;
  return note;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function clearResults() {
  // Nothing stale on screen: empty lists and stats whenever there is no current answer (no query, an error).
  state.last = null;
  $("chosen").replaceChildren(); $("full").replaceChildren();
  $("chosen-note").textContent = ""; $("full-note").textContent = "";
  for (const id of ["overlap", "bytes", "index-bytes", "latency", "encode"]) $(id).textContent = "–";
}

async function runSearch() {
  const query = $("query").value.trim();
  state.query = query;
  updateLabels();
  drawChart();
  if (!query) {
    clearResults();
    showError("");
    document.body.dataset.state = "idle";
    return;
  }
  document.body.dataset.state = "loading";
  try {
    const r = await api("/demo/api/compare", { query, dim: state.dim, k: 10, codec: state.codec, model: state.model });
    if (r.query !== $("query").value.trim() || r.model !== state.model) return; // an older answer
    state.last = r;
    showError("");
    const chosenIds = new Set(r.chosen.hits.map((h) => h.id));
    const fullIds = new Set(r.full.hits.map((h) => h.id));
    renderHits($("chosen"), r.chosen, fullIds);
    renderHits($("full"), r.full, chosenIds);
    $("chosen-note").textContent = scoreNote(r.chosen, r.k);
    $("full-note").textContent = scoreNote(r.full, r.k);
    $("overlap").textContent = `${r.overlap}/${r.k}`;
    $("bytes").textContent = `${r.chosen.bytes_per_vector} vs ${r.full.bytes_per_vector}`;
    $("index-bytes").textContent = `${formatBytes(r.chosen.index_bytes)} vs ${formatBytes(r.full.index_bytes)}`;
    $("latency").textContent = `${r.chosen.ms.toFixed(2)} vs ${r.full.ms.toFixed(2)} ms`;
    $("encode").textContent = `${r.encode_ms.toFixed(1)} ms`;
    // Hooks for tests and scripts: what the page shows right now.
    Object.assign(document.body.dataset, { state: "ready", dim: String(r.chosen.dim), codec: r.chosen.codec, query: r.query, model: r.model });
  } catch (err) {
    if (err.name === "AbortError") return;
    clearResults();
    showError(err.message);
    document.body.dataset.state = "error";
  }
}

function updateLabels() {
  $("dim-value").textContent = `${state.dim} of ${state.info.full_dim}`;
  const codec = state.codec === "float32" ? "" : ` · ${state.codec}`;
  $("chosen-title").textContent = `At ${state.dim} dimensions${codec}`;
  $("full-title").textContent = `At full size · ${state.info.full_dim} dimensions`;
}

// -- the chart: quality from the evaluation results against dimension, current choice marked -------------

function chartSeries() {
  // The selected model's own curves. A model with none gets the curves of models the demo does not offer
  // (a results file about other models), named; never another choice's curves passed off as its own.
  const q = state.info.quality;
  if (!q) return { series: [], own: false, others: [] };
  const keys = state.info.quality_models || {};
  const key = keys[state.model];
  const offered = new Set(Object.values(keys).filter(Boolean));
  const models = key ? [key] : Object.keys(q).filter((m) => !offered.has(m));
  const series = [];
  for (const model of models) {
    const label = key ? state.model : model;
    for (const [task, byDim] of Object.entries(q[model])) {
      const points = Object.entries(byDim).map(([d, v]) => [Number(d), v]).sort((a, b) => a[0] - b[0]);
      series.push({ name: `${label} · ${task}`, points });
    }
  }
  return { series, own: Boolean(key), others: key ? [] : models };
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function valueAt(points, dim) {
  // Interpolate on a log2 axis; null outside the evaluated range.
  for (let i = 0; i < points.length; i++) {
    if (points[i][0] === dim) return points[i][1];
    if (i > 0 && points[i - 1][0] < dim && dim < points[i][0]) {
      const [d0, v0] = points[i - 1], [d1, v1] = points[i];
      const t = (Math.log2(dim) - Math.log2(d0)) / (Math.log2(d1) - Math.log2(d0));
      return v0 + t * (v1 - v0);
    }
  }
  return null;
}

function drawChart() {
  const box = $("chart");
  const { series, own, others } = chartSeries();
  box.replaceChildren();
  box.dataset.dim = String(state.dim);
  box.dataset.model = state.model || "";
  box.dataset.series = String(series.length);
  $("chart-model").textContent = `· ${state.model}`;
  const q = state.info.quality;
  if (!q) {
    $("chart-note").textContent =
      "No evaluation results were loaded, so there is no quality curve. Start the server with --results " +
      "RESULTS.json (shape {\"models\": {name: {task: {dim: value}}}}) to see one.";
    return;
  }
  const missing = own ? "" :
    `No quality curve for ${state.model}: the loaded results have none for it` +
    (others.length ? `; shown instead: ${others.join(", ")}, which the selector does not offer.` : ".");
  if (!series.length) {
    $("chart-note").textContent = missing;
    return;
  }
  // Drawn at the box's own pixel width (redrawn on resize), so text stays 12 px on a phone too.
  const W = Math.max(280, Math.round(box.clientWidth || 1100));
  const narrow = W < 600;
  const H = narrow ? 230 : 300, L = 52, R = narrow ? 14 : 24, T = 18, B = 42;
  const dims = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])).concat(state.dims))].sort((a, b) => a - b);
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.08 || 0.05;
  lo -= pad; hi += pad;
  const x = (d) => L + ((Math.log2(d) - Math.log2(dims[0])) / (Math.log2(dims[dims.length - 1]) - Math.log2(dims[0]) || 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": `quality against dimension, ${state.model}` });
  const rows = narrow ? 3 : 4;
  for (let i = 0; i <= rows; i++) {
    const v = lo + ((hi - lo) * i) / rows;
    svg.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(svgEl("text", { class: "tick-label y-tick", x: L - 8, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(3)));
  }
  // Dimension labels from the largest down, each only where it does not run into the one to its right.
  let leftEdge = Infinity;
  for (const d of [...dims].reverse()) {
    const half = (String(d).length * 7.5) / 2;
    if (x(d) + half > leftEdge - 4) continue;
    svg.append(svgEl("text", { class: "tick-label x-tick", x: x(d), y: H - B + 18, "text-anchor": "middle" }, String(d)));
    leftEdge = x(d) - half;
  }
  svg.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(svgEl("text", { class: "tick-label", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "dimensions (log scale)"));
  series.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { class: "series", d, stroke: color }));
    for (const p of s.points) svg.append(svgEl("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: color }));
  });
  // The current choice.
  const mx = x(state.dim);
  const labelLeft = mx + 60 > W - R;
  svg.append(svgEl("line", { class: "marker", x1: mx, x2: mx, y1: T, y2: H - B }));
  svg.append(svgEl("text", { class: "marker-label", x: labelLeft ? mx - 6 : mx + 6, y: T + 12, "text-anchor": labelLeft ? "end" : "start" }, `${state.dim} d`));
  const notes = [];
  series.forEach((s, i) => {
    const v = valueAt(s.points, state.dim);
    if (v === null) return;
    svg.append(svgEl("circle", { cx: mx, cy: y(v), r: 6, fill: "white", stroke: SERIES_COLORS[i % SERIES_COLORS.length], "stroke-width": 2.5 }));
    const full = valueAt(s.points, s.points[s.points.length - 1][0]);
    notes.push(`${s.name}: ${v.toFixed(3)} (${((100 * v) / full).toFixed(1)}% of ${s.points[s.points.length - 1][0]} d)`);
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = SERIES_COLORS[i % SERIES_COLORS.length];
    item.append(swatch, document.createTextNode(s.name));
    legend.append(item);
  });
  box.append(svg, legend);
  const at = notes.length ? `At ${state.dim} dimensions — ${notes.join("; ")}` : `No evaluation at ${state.dim} dimensions.`;
  $("chart-note").textContent = missing ? `${missing} ${at}` : at;
}

// -- wiring ------------------------------------------------------------------------------------------------

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

async function init() {
  let info;
  try {
    info = await api("/demo/api/info");
  } catch (err) {
    $("meta").textContent = "";
    showError(err.message);
    return;
  }
  state.info = info;
  state.dims = info.dims;
  $("query-title").textContent = info.title;
  $("query").placeholder = info.placeholder;
  const start = info.dims.includes(64) ? info.dims.indexOf(64) : Math.floor(info.dims.length / 2);
  state.dim = info.dims[start];
  $("meta").textContent = `${info.model} · ${info.index_size.toLocaleString()} documents · ${info.full_dim} dimensions`;
  const slider = $("dim");
  slider.max = String(info.dims.length - 1);
  slider.value = String(start);
  $("dim-ticks").replaceChildren(...info.dims.map((d) => Object.assign(document.createElement("span"), { textContent: d })));
  $("codec").replaceChildren(...info.codecs.map((c) => Object.assign(document.createElement("option"), { value: c, textContent: c })));
  state.model = info.models[0];
  $("model").replaceChildren(...info.models.map((m) => Object.assign(document.createElement("option"), { value: m, textContent: m })));
  $("examples").hidden = !info.examples.length;
  $("examples").replaceChildren(...info.examples.map((e) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = e;
    b.addEventListener("click", () => { $("query").value = e; runSearch(); });
    return b;
  }));
  slider.addEventListener("input", () => { state.dim = state.dims[Number(slider.value)]; updateCodecs(); runSearch(); });
  $("codec").addEventListener("change", (e) => { state.codec = e.target.value; runSearch(); });
  $("model").addEventListener("change", (e) => { state.model = e.target.value; runSearch(); });
  $("query").addEventListener("input", debounce(runSearch, 200));
  $("query").addEventListener("keydown", (e) => { if (e.key === "Enter") runSearch(); });
  window.addEventListener("resize", debounce(drawChart, 150));
  updateCodecs();
  updateLabels();
  drawChart();
  document.body.dataset.state = "idle";
}

function updateCodecs() {
  // Offer only what the index can rank by at this dimension (PostgreSQL has no int8, Qdrant ranks a prefix by floats).
  const allowed = state.info.dim_codecs[String(state.dim)] || ["float32"];
  for (const option of $("codec").options) option.disabled = !allowed.includes(option.value);
  if (!allowed.includes(state.codec)) state.codec = allowed[0];
  $("codec").value = state.codec;
}

init();
