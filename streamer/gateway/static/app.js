// The gateway's live page: no build step, no library.  The table comes from /api/v1/series,
// then one EventSource on /api/v1/stream keeps it current (the browser reconnects by itself and
// sends Last-Event-ID, so only the series that moved meanwhile are sent again).  A frozen
// screen must never pass for a quiet market: the banner turns DISCONNECTED when the stream
// says so or goes silent (the gateway sends a heartbeat every heartbeat_s), and STALE when
// levels are older than the gateway's stale_after_s.
"use strict";

const SPARK_POINTS = 60;
const LIVE_POINTS = 2000;
const SEED_SERIES_MAX = 60; // sparklines seeded from bars for at most this many series

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const authHeaders = token ? { Authorization: "Bearer " + token } : {};

const state = {
  info: { stale_after_s: 30, heartbeat_s: 5 },
  rows: new Map(), // id -> {tr, cells, latest, spark: [levels], dirty}
  stream: "connecting", // connecting | live | disconnected
  lastEventAt: 0,
  selected: null,
  live: [], // [ts_ms, level] of the selected series since it was selected
  bars: [], // [t_ms, close] of the selected series
};

async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function fmtLevel(x) {
  return x == null ? "–" : x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function fmtSigned(x, digits, suffix) {
  if (x == null) return "–";
  const text = x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return (x > 0 ? "+" : "") + text + (suffix || "");
}

function fmtAge(ms) {
  if (ms < 0) ms = 0;
  if (ms < 10000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 120000) return Math.round(ms / 1000) + " s";
  if (ms < 7200000) return Math.round(ms / 60000) + " min";
  return Math.round(ms / 3600000) + " h";
}

function cell(tr, cls) {
  const td = document.createElement("td");
  td.className = cls;
  tr.appendChild(td);
  return td;
}

function addRow(id, entry, latest) {
  const tbody = document.querySelector("#levels tbody");
  const tr = document.createElement("tr");
  tr.dataset.series = id;
  const cells = {
    id: cell(tr, "id"),
    name: cell(tr, "name"),
    level: cell(tr, "num level"),
    change: cell(tr, "num change"),
    changePct: cell(tr, "num change-pct"),
    quality: cell(tr, "num quality"),
    age: cell(tr, "num age"),
    spark: cell(tr, "spark"),
  };
  cells.id.textContent = id;
  cells.name.textContent = entry ? entry.name : "";
  cells.name.title = entry ? entry.name + " · " + entry.method + " · " + entry.currency : "";
  tr.addEventListener("click", () => select(id));
  tbody.appendChild(tr);
  const row = { tr, cells, latest: null, spark: [], dirty: true };
  state.rows.set(id, row);
  if (latest) applyLevel(latest, false);
}

function applyLevel(level, flash) {
  const row = state.rows.get(level.index);
  if (!row) return;
  if (row.latest && level.seq === row.latest.seq && level.ts === row.latest.ts) return;
  row.latest = level;
  const c = row.cells;
  c.level.textContent = fmtLevel(level.level);
  c.change.textContent = fmtSigned(level.change, 2);
  c.changePct.textContent = fmtSigned(level.change_pct, 2, " %");
  for (const td of [c.change, c.changePct]) {
    td.classList.toggle("up", level.change > 0);
    td.classList.toggle("down", level.change < 0);
  }
  const coverage = level.coverage == null ? "–" : Math.round(level.coverage * 100) + " %";
  c.quality.textContent = level.stale + " · " + coverage;
  if (level.level != null) {
    row.spark.push(level.level);
    if (row.spark.length > SPARK_POINTS) row.spark.shift();
    row.dirty = true;
  }
  if (flash) {
    c.level.classList.remove("flash");
    void c.level.offsetWidth; // restart the animation
    c.level.classList.add("flash");
  }
  if (state.selected === level.index && level.level != null) {
    state.live.push([level.ts_ms, level.level]);
    if (state.live.length > LIVE_POINTS) state.live.shift();
    document.getElementById("detail-level").textContent = fmtLevel(level.level);
    drawChart();
  }
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length > 1) {
    const lo = Math.min(...values), hi = Math.max(...values);
    const span = hi - lo || 1;
    const points = values.map((v, i) =>
      ((i / (values.length - 1)) * 118 + 1).toFixed(1) + "," + (22 - ((v - lo) / span) * 20).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    const first = values[0], last = values[values.length - 1];
    line.style.stroke = last > first ? "var(--up)" : last < first ? "var(--down)" : "";
    svg.appendChild(line);
  }
  return svg;
}

function connect() {
  const params = new URLSearchParams();
  if (token) params.set("access_token", token);
  const source = new EventSource("/api/v1/stream?" + params.toString());
  const seen = () => { state.lastEventAt = Date.now(); };
  source.addEventListener("status", (e) => { seen(); state.stream = JSON.parse(e.data).state; });
  source.addEventListener("heartbeat", (e) => { seen(); state.stream = JSON.parse(e.data).state; });
  source.addEventListener("level", (e) => { seen(); applyLevel(JSON.parse(e.data), true); });
  // EventSource retries by itself (the gateway asks for 2 s) and resumes with Last-Event-ID.
  source.onerror = () => { state.stream = "disconnected"; };
}

function setBanner(kind, text) {
  const banner = document.getElementById("banner");
  banner.className = "banner " + kind;
  banner.dataset.state = kind;
  banner.textContent = text;
}

function refresh() {
  const now = Date.now();
  document.getElementById("clock").textContent = new Date(now).toISOString().slice(11, 19) + " UTC";
  const staleMs = state.info.stale_after_s * 1000;
  let stale = 0, newest = 0;
  for (const row of state.rows.values()) {
    const level = row.latest;
    const age = level ? now - level.ts_ms : Infinity;
    if (level) newest = Math.max(newest, level.ts_ms);
    const isStale = age > staleMs;
    stale += isStale ? 1 : 0;
    row.tr.classList.toggle("stale", isStale);
    row.cells.age.textContent = level ? fmtAge(age) : "–";
    if (row.dirty) {
      row.cells.spark.replaceChildren(sparkline(row.spark));
      row.dirty = false;
    }
  }
  const silentMs = now - state.lastEventAt;
  const deadAfterMs = Math.max(3 * state.info.heartbeat_s * 1000, 3000);
  if (state.lastEventAt === 0 && state.stream !== "disconnected") {
    setBanner("connecting", "CONNECTING");
  } else if (state.stream === "disconnected" || silentMs > deadAfterMs) {
    const since = state.lastEventAt ? " · nothing received for " + fmtAge(silentMs) : "";
    setBanner("disconnected", "DISCONNECTED" + since);
  } else if (state.rows.size && stale === state.rows.size) {
    setBanner("stale", "STALE · no new level for " + fmtAge(now - newest));
  } else if (stale) {
    setBanner("live", "LIVE · " + stale + " of " + state.rows.size + " series stale");
  } else {
    setBanner("live", "LIVE");
  }
}

async function seedSparklines() {
  const ids = [...state.rows.keys()].slice(0, SEED_SERIES_MAX);
  const from = Date.now() - 2 * 3600 * 1000;
  await Promise.all(ids.map(async (id) => {
    try {
      const body = await getJSON("/api/v1/series/" + encodeURIComponent(id) + "/bars?from=" + from);
      const row = state.rows.get(id);
      const closes = body.bars.map((b) => b.c).filter((c) => c != null);
      row.spark = closes.concat(row.spark).slice(-SPARK_POINTS);
      row.dirty = true;
    } catch (err) { /* the sparkline fills from the stream instead */ }
  }));
}

async function select(id) {
  state.selected = id;
  state.live = [];
  state.bars = [];
  for (const [other, row] of state.rows) row.tr.classList.toggle("selected", other === id);
  const detail = document.getElementById("detail");
  detail.hidden = false;
  const row = state.rows.get(id);
  document.getElementById("detail-title").textContent = id + (row.cells.name.textContent ? " · " + row.cells.name.textContent : "");
  document.getElementById("detail-level").textContent = fmtLevel(row.latest && row.latest.level);
  if (row.latest && row.latest.level != null) state.live.push([row.latest.ts_ms, row.latest.level]);
  const midnight = new Date(); midnight.setUTCHours(0, 0, 0, 0);
  try {
    const body = await getJSON("/api/v1/series/" + encodeURIComponent(id) + "/bars?from=" + midnight.getTime());
    if (state.selected !== id) return;
    state.bars = body.bars.filter((b) => b.c != null).map((b) => [b.t + 60000, b.c]);
  } catch (err) {
    document.getElementById("detail-note").textContent = "bars unavailable: " + err.message;
  }
  drawChart();
}

function drawChart() {
  const svg = document.getElementById("chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 900, H = 300, L = 70, R = 10, T = 10, B = 24;
  const points = state.bars.concat(state.live);
  svg.replaceChildren();
  document.getElementById("detail-note").textContent =
    state.bars.length + " minute bars (blue, at each minute's end) · " + state.live.length + " live levels (amber)";
  if (!points.length) return;
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]), t0 + 10000);
  let lo = Math.min(...points.map((p) => p[1])), hi = Math.max(...points.map((p) => p[1]));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const add = (name, attrs, text) => {
    const el = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    svg.appendChild(el);
  };
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    add("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) });
    add("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtLevel(v));
  }
  const time = (t) => new Date(t).toISOString().slice(11, 16);
  add("text", { class: "axis", x: L, y: H - 6 }, time(t0) + " UTC");
  add("text", { class: "axis", x: W - R, y: H - 6, "text-anchor": "end" }, time(t1) + " UTC");
  const line = (series, cls) => {
    if (series.length) add("polyline", { class: cls, points: series.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") });
  };
  line(state.bars, "bar-line");
  line(state.live, "live-line");
}

async function start() {
  try { state.info = await getJSON("/api/v1/info"); } catch (err) { /* defaults */ }
  document.getElementById("detail-close").addEventListener("click", (e) => {
    e.stopPropagation();
    state.selected = null;
    document.getElementById("detail").hidden = true;
    for (const row of state.rows.values()) row.tr.classList.remove("selected");
  });
  try {
    const body = await getJSON("/api/v1/series");
    for (const item of body.series) addRow(item.id, item.directory, item.latest);
    state.stream = body.state;
  } catch (err) {
    setBanner("disconnected", "DISCONNECTED · " + err.message);
  }
  connect();
  refresh();
  setInterval(refresh, 500);
  seedSparklines();
}

start();
