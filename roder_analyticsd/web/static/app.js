// The dashboard page. Plain script, no build step. Every name that comes from
// the logs (tools, models, workspaces, threads) is written with textContent,
// never as markup. All requests go to this page's own origin (relative URLs).
"use strict";

(() => {
  const FILTERS = ["since", "until", "timezone", "agent", "provider", "model", "workspace"];
  const VIEW_DEFAULTS = { group: "day", stack: "model", tsort: "callCount", tdir: "desc",
    ssort: "lastActivityMs", sdir: "desc", session: "" };
  const PALETTE = ["#6366f1", "#22c55e", "#f59e0b", "#ec4899", "#06b6d4", "#a855f7",
    "#0ea5e9", "#84cc16", "#14b8a6", "#f97316"];
  const OTHER = "#94a3b8";
  const KIND_COLORS = { uncached: "#6366f1", cached: "#22c55e", write: "#f59e0b", completion: "#ec4899" };
  const MAX_STACKED = 7;
  const SESSIONS_SHOWN = 100;
  const SESSIONS_FOLDED = 20;
  let showAllSessions = false;
  // a sessions column the server can sort by (its --sort), the rest sort on the page
  const SERVER_SORTS = { lastActivityMs: "recent", totalTokens: "tokens", costUsd: "cost", toolCallCount: "calls" };

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // --- state kept in the URL ---------------------------------------------------

  function readState() {
    const q = new URLSearchParams(location.search);
    const state = {};
    for (const k of FILTERS) state[k] = q.get(k) || "";
    for (const [k, v] of Object.entries(VIEW_DEFAULTS)) state[k] = q.get(k) || v;
    return state;
  }
  let state = readState();

  function writeState(replace = false) {
    const q = new URLSearchParams();
    for (const k of FILTERS) if (state[k]) q.set(k, state[k]);
    for (const [k, v] of Object.entries(VIEW_DEFAULTS)) if (state[k] && state[k] !== v) q.set(k, state[k]);
    const url = location.pathname + (q.toString() ? "?" + q.toString() : "");
    if (url !== location.pathname + location.search) {
      (replace ? history.replaceState : history.pushState).call(history, null, "", url);
    }
  }

  function filterParams(extra = {}, drop = []) {
    const p = {};
    for (const k of FILTERS) if (state[k] && !drop.includes(k)) p[k] = state[k];
    if (!supportsAgent) delete p.agent;
    return Object.assign(p, extra);
  }

  // --- formatting --------------------------------------------------------------

  const nf = new Intl.NumberFormat("en-US");
  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  function count(n) {
    if (n === null || n === undefined) return "—";
    return Math.abs(n) >= 10000 ? compact.format(n) : nf.format(n);
  }
  function usd(v, unpriced) {
    if (v === null || v === undefined) return "—";
    const digits = v !== 0 && Math.abs(v) < 1 ? (Math.abs(v) < 0.01 ? 4 : 3) : 2;
    return "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: digits }) +
      (unpriced ? "+" : "");
  }
  function pct(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    return (v * 100).toLocaleString("en-US", { maximumFractionDigits: v < 0.1 ? 2 : 1 }) + "%";
  }
  function dur(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    if (ms < 3600000) return `${(ms / 60000).toFixed(1)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }
  function zone() { return state.timezone || "UTC"; }
  function when(ms) {
    if (ms === null || ms === undefined) return "—";
    try {
      return new Intl.DateTimeFormat("en-GB", { timeZone: zone(), year: "numeric", month: "short",
        day: "2-digit", hour: "2-digit", minute: "2-digit" }).format(new Date(ms));
    } catch (e) {
      return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
    }
  }
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} days ago`;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
  }

  // --- DOM helpers (text only) ---------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "title") node.title = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function empty(id, message) {
    const node = document.getElementById(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  // --- the API -----------------------------------------------------------------------

  class ApiError extends Error {}

  async function api(path, params = {}) {
    const qs = new URLSearchParams(params).toString();
    const response = await fetch(`api/${path}${qs ? "?" + qs : ""}`, {
      credentials: "same-origin", headers: { Accept: "application/json" } });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new ApiError((body && body.error) || `${response.status} ${response.statusText}`);
    }
    storeMissing = response.headers.get("X-Store") === "missing";
    return body;
  }
  let storeMissing = false;
  let supportsAgent = false;

  function notice(kind, ...parts) {
    const box = $("#notice");
    clear(box);
    if (!kind) { box.hidden = true; return; }
    box.className = `notice ${kind}`;
    for (const p of parts) box.append(typeof p === "string" ? document.createTextNode(p) : p);
    box.hidden = false;
  }
  const code = (text) => el("code", { text });

  // --- headline ----------------------------------------------------------------------

  function renderSummary(s) {
    for (const node of $$("[data-metric]")) {
      const key = node.getAttribute("data-metric");
      if (!(key in s)) continue;
      const v = s[key];
      node.setAttribute("data-value", v === null ? "null" : String(v));
      if (key === "costUsd") {
        node.textContent = usd(v, s.unpricedTurnCount);
        node.title = v === null ? "no turn in this window has a known price" : `$${v}`;
      } else if (key === "mostCalledTool") {
        node.textContent = v === null ? "—" : v;
      } else {
        node.textContent = count(v);
        node.title = v === null ? "" : nf.format(v);
      }
    }
    const rate = s.toolCallCount ? s.toolErrorCount / s.toolCallCount : null;
    const rateNode = $("#error-rate");
    rateNode.textContent = pct(rate);
    rateNode.classList.toggle("bad", rate !== null && rate >= 0.1);
    const note = $("#cost-note");
    if (s.unpricedTurnCount) {
      note.textContent = `partial: ${nf.format(s.unpricedTurnCount)} turns on models with no known price`;
    } else if (s.costUsd === null) {
      note.textContent = "no known price for these models";
    } else {
      note.textContent = "from the bundled price table";
    }
  }

  // --- charts ---------------------------------------------------------------------------

  const charts = new Map();
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  function bucketSeconds(key) {
    // day keys YYYY-MM-DD, ISO weeks YYYY-Www, months YYYY-MM: a UTC midnight
    let m = /^(\d{4})-W(\d{2})$/.exec(key);
    if (m) {
      const year = +m[1], week = +m[2];
      const jan4 = Date.UTC(year, 0, 4);
      const jan4Day = (new Date(jan4).getUTCDay() + 6) % 7;
      return (jan4 - jan4Day * 86400000 + (week - 1) * 7 * 86400000) / 1000;
    }
    m = /^(\d{4})-(\d{2})(?:-(\d{2}))?$/.exec(key);
    if (m) return Date.UTC(+m[1], +m[2] - 1, m[3] ? +m[3] : 1) / 1000;
    return null;
  }

  function axisStyle() {
    const grid = css("--grid"), text = css("--muted");
    return { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  }

  function drawChart(id, opts, data) {
    const host = document.getElementById(id);
    const old = charts.get(id);
    if (old) { old.destroy(); charts.delete(id); }
    clear(host);
    if (!window.uPlot) return null;
    const width = Math.max(280, host.clientWidth || host.parentElement.clientWidth || 600);
    const chart = new uPlot(Object.assign({ width, height: host.classList.contains("small") ? 180 : 300 }, opts), data, host);
    charts.set(id, chart);
    return chart;
  }

  window.addEventListener("resize", () => {
    for (const [id, chart] of charts) {
      const host = document.getElementById(id);
      if (host && host.clientWidth) chart.setSize({ width: host.clientWidth, height: chart.height });
    }
  });

  const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");

  function stackedBars(id, xs, layers, costs, labelFor) {
    // layers: [{label, color, values[]}], bottom first; drawn as cumulative bars
    const n = xs.length;
    const cumulative = [];
    let running = new Array(n).fill(0);
    for (const layer of layers) {
      running = running.map((v, i) => v + (layer.values[i] || 0));
      cumulative.push(running.slice());
    }
    const bars = uPlot.paths.bars({ size: [0.72, 48], gap: 1 });
    const series = [{ label: labelFor, value: (u, v) => (v === null ? "—" : formatBucket(v)) }];
    const data = [xs];
    // tallest first so every shorter layer is painted over it
    for (let li = layers.length - 1; li >= 0; li--) {
      const layer = layers[li];
      series.push({
        label: layer.label, fill: layer.color, stroke: layer.color, width: 0, paths: bars,
        points: { show: false },
        value: (u, v, si, i) => (i === null || i === undefined ? "—" : count(layer.values[i] || 0)),
      });
      data.push(cumulative[li]);
    }
    if (costs) {
      series.push({ label: "Cost (USD)", scale: "usd", stroke: css("--cost"), width: 2,
        points: { show: true, size: 5, fill: css("--cost") },
        value: (u, v) => (v === null ? "—" : usd(v)) });
      data.push(costs);
    }
    const axes = [
      Object.assign(axisStyle(), { values: (u, ticks) => ticks.map(formatTick) }),
      Object.assign(axisStyle(), { values: (u, ticks) => ticks.map((t) => compact.format(t)), size: 56 }),
    ];
    if (costs) {
      axes.push(Object.assign(axisStyle(), { scale: "usd", side: 1, grid: { show: false }, size: 60,
        values: (u, ticks) => ticks.map((t) => "$" + (t >= 100 ? t.toFixed(0) : t.toFixed(2))) }));
    }
    const span = xs.length > 1 ? (xs[xs.length - 1] - xs[0]) / (xs.length - 1) : 86400;
    return drawChart(id, {
      tzDate: utcDate,
      series, axes,
      scales: {
        x: { time: true, range: (u, lo, hi) => [lo - span * 0.6, hi + span * 0.6] },
        y: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.08 : 1] },
        usd: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.15 : 1] },
      },
      legend: { live: true },
      cursor: { points: { show: false } },
    }, data);
  }

  function formatBucket(ts) {
    const d = new Date(ts * 1000);
    const iso = d.toISOString().slice(0, 10);
    if (state.group === "month") return iso.slice(0, 7);
    if (state.group === "week") return "week of " + iso;
    return iso;
  }
  function formatTick(ts) {
    const d = new Date(ts * 1000);
    const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    if (state.group === "month") return `${months[d.getUTCMonth()]} ${d.getUTCFullYear()}`;
    return `${d.getUTCDate()} ${months[d.getUTCMonth()]}`;
  }

  // buckets with no usage are drawn as zero, not bridged by the cost line
  function nextBucket(key) {
    const t = bucketSeconds(key) * 1000;
    const d = new Date(t);
    if (state.group === "month") {
      const n = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1));
      return n.toISOString().slice(0, 7);
    }
    if (state.group === "week") {
      const n = new Date(t + 7 * 86400000);
      const thursday = new Date(n.getTime() + 3 * 86400000);
      const year = thursday.getUTCFullYear();
      const week = Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86400000)) + 1;
      return `${year}-W${String(week).padStart(2, "0")}`;
    }
    return new Date(t + 86400000).toISOString().slice(0, 10);
  }

  function fillGaps(rows) {
    if (rows.length < 2) return rows;
    const have = new Map(rows.map((r) => [r.group, r]));
    const out = [];
    let key = rows[0].group;
    const last = rows[rows.length - 1].group;
    while (out.length < 5000) {
      out.push(have.get(key) || { group: key, promptTokens: 0, completionTokens: 0, totalTokens: 0,
        cachedPromptTokens: 0, cacheCreationPromptTokens: 0, turnCount: 0, costUsd: 0 });
      if (key >= last) break;
      key = nextBucket(key);
    }
    return out;
  }

  function renderTokens(stack, byTime) {
    const has = byTime.length > 0;
    empty("tokens-empty", has ? "" : "No token usage in this window.");
    $("#tokens-chart").hidden = !has;
    if (!has) { drawChart("tokens-chart", {}, [[]]); return; }
    byTime = fillGaps(byTime.slice().sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0)));
    const keys = byTime.map((r) => r.group);
    const xs = keys.map(bucketSeconds);
    const index = new Map(keys.map((k, i) => [k, i]));
    const costs = byTime.map((r) => r.costUsd);
    let layers;
    if (state.stack === "kind") {
      const pick = (f) => byTime.map(f);
      layers = [
        { label: "Prompt (uncached)", color: KIND_COLORS.uncached,
          values: pick((r) => Math.max(0, r.promptTokens - r.cachedPromptTokens - r.cacheCreationPromptTokens)) },
        { label: "Cached prompt", color: KIND_COLORS.cached, values: pick((r) => r.cachedPromptTokens) },
        { label: "Cache write", color: KIND_COLORS.write, values: pick((r) => r.cacheCreationPromptTokens) },
        { label: "Completion", color: KIND_COLORS.completion, values: pick((r) => r.completionTokens) },
      ];
    } else {
      const totals = new Map();
      for (const r of stack) totals.set(r.key, (totals.get(r.key) || 0) + r.totalTokens);
      const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map((e) => e[0]);
      const shown = ranked.length > MAX_STACKED ? ranked.slice(0, MAX_STACKED - 1) : ranked;
      const rest = ranked.length > shown.length;
      const byKey = new Map(shown.map((k, i) => [k, { label: k, color: PALETTE[i % PALETTE.length], values: new Array(xs.length).fill(0) }]));
      const other = { label: `${ranked.length - shown.length} more`, color: OTHER, values: new Array(xs.length).fill(0) };
      for (const r of stack) {
        const i = index.get(r.group);
        if (i === undefined) continue;
        (byKey.get(r.key) || other).values[i] += r.totalTokens;
      }
      layers = [...byKey.values()];
      if (rest) layers.push(other);
    }
    stackedBars("tokens-chart", xs, layers, costs, state.group[0].toUpperCase() + state.group.slice(1));
  }

  // --- model mix -----------------------------------------------------------------------

  function renderMix(rows) {
    const host = clear($("#mix"));
    empty("mix-empty", rows.length ? "" : "No token usage in this window.");
    if (!rows.length) return;
    const tokens = rows.reduce((a, r) => a + r.totalTokens, 0);
    const cost = rows.reduce((a, r) => a + (r.costUsd || 0), 0);
    const head = el("div", { class: "mix-row mix-head" },
      el("span", { text: "Model" }), el("span", { text: "Tokens" }), el("span", { text: "Cost" }));
    host.append(head);
    rows.slice(0, 12).forEach((r, i) => {
      const color = PALETTE[i % PALETTE.length];
      const tShare = tokens ? r.totalTokens / tokens : 0;
      const cShare = cost && r.costUsd !== null ? r.costUsd / cost : null;
      const name = el("span", { class: "mix-name", title: r.group },
        el("i", { class: "swatch" }), el("span", { text: r.group }));
      name.firstChild.style.background = color;
      host.append(el("div", { class: "mix-row" },
        name,
        shareBar(tShare, color, `${pct(tShare)} · ${count(r.totalTokens)}`),
        shareBar(cShare, color, r.costUsd === null ? "no price" : `${pct(cShare)} · ${usd(r.costUsd, r.unpricedTurnCount)}`)));
    });
    if (rows.length > 12) host.append(el("div", { class: "hint", text: `and ${rows.length - 12} more models` }));
  }

  function shareBar(share, color, label) {
    const fill = el("i", { class: "fill" });
    fill.style.width = `${Math.max(0, Math.min(1, share || 0)) * 100}%`;
    fill.style.background = color;
    return el("span", { class: "share" }, el("span", { class: "track" }, fill), el("span", { class: "share-label", text: label }));
  }

  // --- heatmap --------------------------------------------------------------------------

  function renderHours(cells) {
    const host = clear($("#heatmap"));
    const total = cells.reduce((a, c) => a + c.turns, 0);
    empty("hours-empty", total ? "" : "No turns in this window.");
    $("#hours-hint").textContent = `turns per weekday and hour, ${zone()}`;
    if (!total) return;
    const grid = new Map(cells.map((c) => [`${c.weekday}:${c.hour}`, c]));
    const max = Math.max(...cells.map((c) => c.turns));
    const days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    host.append(el("span", { class: "hm-corner" }));
    for (let h = 0; h < 24; h++) host.append(el("span", { class: "hm-hour", text: h % 3 === 0 ? String(h).padStart(2, "0") : "" }));
    for (let d = 1; d <= 7; d++) {
      host.append(el("span", { class: "hm-day", text: days[d - 1] }));
      for (let h = 0; h < 24; h++) {
        const c = grid.get(`${d}:${h}`);
        const n = c ? c.turns : 0;
        const cell = el("span", { class: "hm-cell", title: `${days[d - 1]} ${String(h).padStart(2, "0")}:00–${String(h).padStart(2, "0")}:59 · ${nf.format(n)} turns · ${nf.format(c ? c.toolCalls : 0)} tool calls` });
        if (n) cell.style.opacity = String(0.15 + 0.85 * Math.sqrt(n / max));
        else cell.classList.add("zero");
        host.append(cell);
      }
    }
  }

  // --- sortable tables --------------------------------------------------------------------

  function sortRows(rows, key, dir) {
    const sign = dir === "asc" ? 1 : -1;
    return rows.slice().sort((a, b) => {
      const x = a[key], y = b[key];
      if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === "string") return sign * x.localeCompare(y);
      return sign * (x - y);
    });
  }

  function markSorted(table, key, dir) {
    for (const th of $$("th[data-key]", table)) {
      th.classList.toggle("sorted", th.dataset.key === key);
      th.setAttribute("aria-sort", th.dataset.key === key ? (dir === "asc" ? "ascending" : "descending") : "none");
      th.dataset.dir = th.dataset.key === key ? dir : "";
    }
  }

  function cell(text, cls, title) {
    const td = el("td", { text });
    if (cls) td.className = cls;
    if (title) td.title = title;
    return td;
  }

  let toolRows = [];
  function renderTools() {
    const table = $("#tools-table");
    const body = clear($("tbody", table));
    empty("tools-empty", toolRows.length ? "" : "No tool calls in this window.");
    table.hidden = !toolRows.length;
    markSorted(table, state.tsort, state.tdir);
    const timed = toolRows.filter((r) => r.p99DurationMs !== null);
    const lo = Math.max(1, Math.min(...timed.map((r) => r.p50DurationMs || 1), 1e9));
    const hi = Math.max(lo * 10, ...timed.map((r) => r.p99DurationMs));
    const pos = (v) => (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) * 100;
    for (const r of sortRows(toolRows, state.tsort, state.tdir)) {
      const latency = el("td", { class: "latency" });
      if (r.p99DurationMs !== null) {
        const track = el("span", { class: "lat-track", title: `p50 ${dur(r.p50DurationMs)} · p95 ${dur(r.p95DurationMs)} · p99 ${dur(r.p99DurationMs)}` });
        const bar = el("i", { class: "lat-bar" });
        bar.style.left = `${pos(r.p50DurationMs)}%`;
        bar.style.width = `${Math.max(0.8, pos(r.p99DurationMs) - pos(r.p50DurationMs))}%`;
        const tick = el("i", { class: "lat-p95" });
        tick.style.left = `${pos(r.p95DurationMs)}%`;
        track.append(bar, tick);
        latency.append(track);
      }
      body.append(el("tr", {},
        cell(r.toolName, "text mono"),
        cell(count(r.callCount), "", nf.format(r.callCount)),
        cell(count(r.errorCount), r.errorCount ? "warn" : ""),
        cell(pct(r.errorRate), r.errorRate >= 0.1 ? "bad" : ""),
        cell(dur(r.avgDurationMs)), cell(dur(r.p50DurationMs)), cell(dur(r.p95DurationMs)), cell(dur(r.p99DurationMs)),
        latency));
    }
  }

  let sessionRows = [];
  function renderSessions() {
    const table = $("#sessions-table");
    const body = clear($("tbody", table));
    empty("sessions-empty", sessionRows.length ? "" : "No sessions in this window.");
    table.hidden = !sessionRows.length;
    markSorted(table, state.ssort, state.sdir);
    const sorted = SERVER_SORTS[state.ssort] && state.sdir === "desc" ? sessionRows : sortRows(sessionRows, state.ssort, state.sdir);
    const rows = showAllSessions ? sorted : sorted.slice(0, SESSIONS_FOLDED);
    const more = $("#sessions-more");
    more.hidden = sorted.length <= SESSIONS_FOLDED;
    more.textContent = showAllSessions ? "Show fewer" : `Show all ${sorted.length}`;
    for (const r of rows) {
      const tr = el("tr", { class: "clickable", tabIndex: 0 },
        cell(when(r.lastActivityMs)),
        cell(r.threadId, "text mono"),
        cell(r.workspaceLabel || "—", "text ellipsis", r.workspaceLabel || ""),
        cell(r.model || "—", "text"),
        cell(count(r.turnCount)), cell(count(r.toolCallCount)),
        cell(count(r.toolErrorCount), r.toolErrorCount ? "warn" : ""),
        cell(count(r.totalTokens), "", nf.format(r.totalTokens)),
        cell(dur(r.totalToolDurationMs)),
        cell(usd(r.costUsd, r.unpricedTurnCount)));
      tr.dataset.thread = r.threadId;
      tr.addEventListener("click", () => openSession(r.threadId));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") openSession(r.threadId); });
      body.append(tr);
    }
  }

  function bindSorting(table, keyName, dirName, after) {
    for (const th of $$("th[data-key]", table)) {
      th.tabIndex = 0;
      const go = () => {
        const key = th.dataset.key;
        if (state[keyName] === key) state[dirName] = state[dirName] === "desc" ? "asc" : "desc";
        else { state[keyName] = key; state[dirName] = th.classList.contains("text") ? "asc" : "desc"; }
        writeState();
        after();
      };
      th.addEventListener("click", go);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
    }
  }

  // --- activity and fleet bars ---------------------------------------------------------------

  function renderBars(id, rows, labelKey, valueKey, errorKey) {
    const host = clear(document.getElementById(id));
    if (!rows.length) { host.append(el("p", { class: "empty", text: "No events." })); return; }
    const max = Math.max(...rows.map((r) => r[valueKey]));
    for (const r of rows.slice(0, 10)) {
      const fill = el("i", { class: "fill" });
      fill.style.width = `${(r[valueKey] / max) * 100}%`;
      const bar = el("span", { class: "track" }, fill);
      if (errorKey && r[errorKey]) {
        const err = el("i", { class: "fill err" });
        err.style.width = `${(r[errorKey] / max) * 100}%`;
        bar.append(err);
      }
      const label = String(r[labelKey]);
      host.append(el("div", { class: "bar-row", title: errorKey ? `${nf.format(r[valueKey])} events · ${nf.format(r[errorKey])} errors` : nf.format(r[valueKey]) },
        el("span", { class: "bar-label", text: label.replace(/_/g, " ") }),
        bar,
        el("span", { class: "bar-value", text: count(r[valueKey]) })));
    }
    if (rows.length > 10) host.append(el("div", { class: "hint", text: `and ${rows.length - 10} more` }));
  }

  function renderFleet(dau, instances, modules, errors) {
    const line = (id, rows, key, label) => {
      const xs = rows.map((r) => bucketSeconds(r.day));
      drawChart(id, {
        tzDate: utcDate,
        series: [{ value: (u, v) => (v === null ? "—" : new Date(v * 1000).toISOString().slice(0, 10)) },
          { label, stroke: PALETTE[0], fill: "rgba(99,102,241,0.15)", width: 2, points: { size: 4 } }],
        axes: [Object.assign(axisStyle(), {}), Object.assign(axisStyle(), { size: 44 })],
        scales: { y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.15)] } },
      }, [xs, rows.map((r) => r[key])]);
    };
    line("fleet-dau", dau, "installations", "Installations");
    line("fleet-instances", instances, "instances", "Instances");
    renderBars("fleet-modules", modules, "module", "events");
    const body = clear($("#fleet-errors tbody"));
    for (const r of errors.slice(0, 15)) {
      body.append(el("tr", {}, cell(r.module || "(none)", "text"), cell(r.loopStage || "(none)", "text"),
        cell(r.outcome || "(none)", "text"), cell(count(r.events)), cell(count(r.errorEvents), r.errorEvents ? "warn" : ""),
        cell(pct(r.events ? r.errorEvents / r.events : null))));
    }
  }

  // --- status -----------------------------------------------------------------------------------

  function renderStatus(s) {
    const dl = clear($("#status"));
    const row = (k, v, cls) => { dl.append(el("dt", { text: k }), el("dd", { text: v, class: cls || "" })); };
    if ("running" in s) {
      row("Daemon", s.running ? `running${s.pid ? ` (pid ${s.pid})` : ""}` : "not running", s.running ? "ok" : "warn");
    }
    row("Store", s.store, "mono");
    row("Store size", s.storeExists ? bytes(s.storeBytes) : "not created yet");
    if ("schemaVersion" in s) row("Schema version", s.schemaVersion === null ? "—" : String(s.schemaVersion));
    if ("lagBytes" in s) {
      row("Lag", s.lagLines ? `${nf.format(s.lagLines)} lines · ${bytes(s.lagBytes)} not yet ingested` : "none: every file is ingested", s.lagLines ? "warn" : "ok");
      row("Files tracked", nf.format(s.filesTracked));
      if (s.unreadableFiles && s.unreadableFiles.length) row("Unreadable files", String(s.unreadableFiles.length), "warn");
    }
    if ("lastRollupMs" in s) row("Last rollup", s.lastRollupMs ? `${when(s.lastRollupMs)} (${ago(s.lastRollupMs)})` : "never");
  }

  function explainEmpty(status, summary) {
    if (!status.storeExists) {
      notice("info",
        el("strong", { text: "No data yet. " }),
        "The store ", code(status.store), " does not exist. Start the daemon with ",
        code("roder-analyticsd"), " (or install it as a service: ", code("roder-analyticsd install-service"),
        "), or backfill once with ", code("roder-analyticsd --once"),
        ". This page fills in by itself as soon as data arrives.");
      return;
    }
    if (!summary.turnCount && !summary.sessionCount && !summary.toolCallCount) {
      const filtered = FILTERS.some((k) => state[k] && k !== "timezone");
      if (filtered) {
        notice("info", el("strong", { text: "Nothing matches these filters. " }),
          "Widen the window or clear a filter (Reset).");
      } else if (status.running) {
        notice("info", el("strong", { text: "The store is empty. " }),
          "The daemon is running: activity appears here as Roder writes it.");
      } else {
        notice("info", el("strong", { text: "The store is empty. " }), "Start the daemon with ",
          code("roder-analyticsd"), " or backfill once with ", code("roder-analyticsd --once"), ".");
      }
      return;
    }
    notice(null);
  }

  // --- filters ----------------------------------------------------------------------------------

  function fillSelect(select, rows, current, allLabel) {
    const keep = new Set(rows.map((r) => r.group));
    if (current) keep.add(current);
    clear(select);
    select.append(el("option", { value: "", text: allLabel }));
    for (const name of [...keep].filter((n) => n !== "(unknown)").sort((a, b) => a.localeCompare(b))) {
      select.append(el("option", { value: name, text: name }));
    }
    select.value = current || "";
  }

  function syncForm() {
    const form = $("#filters");
    const range = ["", "24h", "7d", "30d", "90d"].includes(state.since) && !state.until ? state.since : "custom";
    form.range.value = range;
    form.since.value = state.since;
    form.until.value = state.until;
    form.timezone.value = state.timezone;
    for (const k of ["provider", "model", "workspace", "agent"]) if (form[k]) form[k].value = state[k];
    document.body.classList.toggle("custom-range", range === "custom");
    for (const seg of $$(".seg")) {
      for (const b of $$("button", seg)) b.classList.toggle("on", b.dataset.value === state[seg.dataset.control]);
    }
  }

  function bindForm() {
    const form = $("#filters");
    form.addEventListener("submit", (e) => e.preventDefault());
    form.range.addEventListener("change", () => {
      if (form.range.value === "custom") { document.body.classList.add("custom-range"); form.since.focus(); return; }
      state.since = form.range.value; state.until = "";
      changed();
    });
    for (const name of ["since", "until", "timezone"]) {
      form[name].addEventListener("change", () => { state[name] = form[name].value.trim(); changed(); });
    }
    for (const name of ["provider", "model", "workspace", "agent"]) {
      form[name].addEventListener("change", () => { state[name] = form[name].value; changed(); });
    }
    $("#reset").addEventListener("click", () => {
      for (const k of FILTERS) state[k] = "";
      changed();
    });
    for (const seg of $$(".seg")) {
      for (const b of $$("button", seg)) {
        b.addEventListener("click", () => { state[seg.dataset.control] = b.dataset.value; writeState(); syncForm(); refresh(); });
      }
    }
    const zones = $("#zones");
    const local = Intl.DateTimeFormat().resolvedOptions().timeZone;
    for (const z of new Set([local, "UTC", "Europe/London", "Europe/Berlin", "America/New_York",
      "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney"])) {
      if (z) zones.append(el("option", { value: z }));
    }
    window.addEventListener("popstate", () => { state = readState(); syncForm(); refresh(); syncSessionDialog(); });
  }

  function changed() { writeState(); syncForm(); refresh(); }

  // --- session drill-down -----------------------------------------------------------------------

  async function openSession(thread) {
    state.session = thread;
    writeState();
    await showSession();
  }

  function syncSessionDialog() {
    const dialog = $("#session-dialog");
    if (state.session) showSession();
    else if (dialog.open) dialog.close();
  }

  async function showSession() {
    const dialog = $("#session-dialog");
    const thread = state.session;
    if (!thread) return;
    let detail;
    try {
      detail = await api("session", filterParams({ thread, limit: "1000" }));
    } catch (e) {
      notice("error", `Session ${thread}: ${e.message}`);
      return;
    }
    if (state.session !== thread) return;
    const s = detail.session;
    $("#session-title").textContent = thread;
    $("#session-sub").textContent = s ? [s.workspaceLabel, [s.provider, s.model].filter(Boolean).join(" / "),
      `${when(s.firstActivityMs)} → ${when(s.lastActivityMs)}`].filter(Boolean).join(" · ") : "no activity in this window";
    const cards = clear($("#session-cards"));
    if (s) {
      for (const [label, value] of [["Turns", count(s.turnCount)], ["Tool calls", count(s.toolCallCount)],
        ["Errors", count(s.toolErrorCount)], ["Tokens", count(s.totalTokens)], ["Tool time", dur(s.totalToolDurationMs)],
        ["Cost", usd(s.costUsd, s.unpricedTurnCount)]]) {
        cards.append(el("div", { class: "mini" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value })));
      }
    }
    // cumulative tokens and cost per turn, over time
    const turns = detail.turns.filter((t) => (t.completedAtMs || t.startedAtMs) !== null);
    const xs = [], tok = [], cost = [];
    let tokSum = 0, costSum = 0;
    for (const t of turns.slice().sort((a, b) => (a.completedAtMs || a.startedAtMs) - (b.completedAtMs || b.startedAtMs))) {
      tokSum += t.totalTokens; costSum += t.costUsd || 0;
      xs.push((t.completedAtMs || t.startedAtMs) / 1000); tok.push(tokSum); cost.push(Math.round(costSum * 1e6) / 1e6);
    }
    if (!dialog.open) dialog.showModal();
    if (xs.length) {
      drawChart("session-chart", {
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone()),
        series: [{}, { label: "Tokens (cumulative)", stroke: PALETTE[0], fill: "rgba(99,102,241,0.12)", width: 2, value: (u, v) => (v === null ? "—" : count(v)) },
          { label: "Cost (cumulative)", scale: "usd", stroke: css("--cost"), width: 2, value: (u, v) => (v === null ? "—" : usd(v)) }],
        axes: [axisStyle(), Object.assign(axisStyle(), { size: 56, values: (u, t) => t.map((x) => compact.format(x)) }),
          Object.assign(axisStyle(), { scale: "usd", side: 1, grid: { show: false }, size: 60, values: (u, t) => t.map((x) => "$" + x.toFixed(2)) })],
        scales: { y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] }, usd: { range: (u, lo, hi) => [0, Math.max(0.01, hi * 1.1)] } },
      }, [xs, tok, cost]);
    } else {
      clear($("#session-chart")).append(el("p", { class: "empty", text: "No token usage in this window." }));
    }
    renderTimeline(detail.toolCalls);
    const tb = clear($("#session-turns tbody"));
    for (const t of detail.turns) {
      tb.append(el("tr", {}, cell(when(t.startedAtMs || t.completedAtMs)), cell(t.turnId, "text mono"),
        cell(t.model || "—", "text"), cell(t.status, `text status-${t.status}`),
        cell(t.hasTokenUsage ? count(t.totalTokens) : "—"), cell(t.hasTokenUsage ? usd(t.costUsd, t.unpricedTurnCount) : "—")));
    }
    const cb = clear($("#session-calls tbody"));
    for (const c of detail.toolCalls) {
      cb.append(el("tr", {}, cell(when(c.startedAtMs || c.completedAtMs)), cell(c.toolName, "text mono"),
        cell(dur(c.durationMs)), cell(c.status, `text status-${c.status}`)));
    }
  }

  function renderTimeline(calls) {
    const host = clear($("#session-timeline"));
    const timed = calls.filter((c) => c.startedAtMs !== null);
    if (!timed.length) { host.append(el("p", { class: "empty", text: "No timed tool calls." })); return; }
    const start = Math.min(...timed.map((c) => c.startedAtMs));
    const end = Math.max(...timed.map((c) => c.completedAtMs || c.startedAtMs));
    const span = Math.max(1, end - start);
    const names = [...new Set(timed.map((c) => c.toolName))].slice(0, 12);
    const color = new Map(names.map((n, i) => [n, PALETTE[i % PALETTE.length]]));
    for (const name of names) {
      const lane = el("div", { class: "lane" }, el("span", { class: "lane-label mono", text: name, title: name }));
      const track = el("span", { class: "lane-track" });
      for (const c of timed.filter((x) => x.toolName === name)) {
        const mark = el("i", { class: `span ${c.status}`, title: `${c.toolName} · ${dur(c.durationMs)} · ${c.status} · ${when(c.startedAtMs)}` });
        mark.style.left = `${((c.startedAtMs - start) / span) * 100}%`;
        mark.style.width = `${Math.max(0.35, ((c.durationMs || 0) / span) * 100)}%`;
        if (c.status !== "error") mark.style.background = color.get(name);
        track.append(mark);
      }
      lane.append(track);
      host.append(lane);
    }
  }

  // --- loading ----------------------------------------------------------------------------------

  let loading = null;
  let again = false;

  async function refresh() {
    if (loading) { again = true; return loading; }
    loading = (async () => {
      try { await loadAll(); } finally { loading = null; }
      if (again) { again = false; await refresh(); }
    })();
    return loading;
  }

  async function loadAll() {
    const f = filterParams();
    let summary;
    try {
      summary = await api("summary", f);   // first: the headline shows before the rest
    } catch (e) {
      if (e instanceof ApiError) { notice("error", e.message); return; }
      throw e;
    }
    renderSummary(summary);
    const window = filterParams({}, ["provider", "model", "workspace", "agent"]);
    const sessionSort = SERVER_SORTS[state.ssort] || "recent";
    const jobs = {
      stack: api("tokens/stack", Object.assign({}, f, { group: state.group, by: state.stack === "provider" ? "provider" : "model", limit: "1000" })),
      byTime: api("tokens", Object.assign({}, f, { group: state.group, limit: "1000" })),
      mix: api("tokens", Object.assign({}, f, { group: "model", limit: "1000" })),
      tools: api("tools", Object.assign({}, f, { limit: "1000" })),
      sessions: api("sessions", Object.assign({}, f, { sort: sessionSort, limit: String(SESSIONS_SHOWN) })),
      hours: api("hours", f),
      status: api("status"),
      providers: api("tokens", Object.assign({}, window, { group: "provider", limit: "1000" })),
      models: api("tokens", Object.assign({}, window, { group: "model", limit: "1000" })),
      workspaces: api("tokens", Object.assign({}, window, { group: "workspace", limit: "1000" })),
      collected: api("fleet/modules", { source: "collected", limit: "1" }).catch(() => []),
    };
    const activityFilter = filterParams({}, ["provider", "model", "agent"]);
    for (const by of ["execution-kind", "loop-stage", "outcome", "error-category"]) {
      jobs[`act:${by}`] = api("activity", Object.assign({}, activityFilter, { by, limit: "1000" })).catch(() => []);
    }
    const keys = Object.keys(jobs);
    const settled = await Promise.allSettled(Object.values(jobs));
    const r = {};
    const errors = [];
    settled.forEach((s, i) => { if (s.status === "fulfilled") r[keys[i]] = s.value; else errors.push(s.reason); });
    if (errors.length) {
      notice("error", errors[0].message || String(errors[0]));
    } else if (r.status) {
      explainEmpty(r.status, summary);
    }
    if (r.byTime && r.stack) renderTokens(r.stack, r.byTime);
    if (r.mix) renderMix(r.mix);
    if (r.hours) renderHours(r.hours);
    if (r.tools) { toolRows = r.tools; renderTools(); }
    if (r.sessions) { sessionRows = r.sessions; renderSessions(); }
    for (const by of ["execution-kind", "loop-stage", "outcome", "error-category"]) {
      if (r[`act:${by}`]) renderBars(`act-${by}`, r[`act:${by}`], "key", "events", "errorEvents");
    }
    if (r.status) renderStatus(r.status);
    const form = $("#filters");
    if (r.providers) fillSelect(form.provider, r.providers, state.provider, "Every provider");
    if (r.models) fillSelect(form.model, r.models, state.model, "Every model");
    if (r.workspaces) fillSelect(form.workspace, r.workspaces, state.workspace, "Every workspace");
    const fleet = $("#fleet-panel");
    if (r.collected && r.collected.length) {
      const fw = filterParams({}, ["provider", "model", "workspace", "agent"]);
      try {
        const [dau, inst, mods, errs] = await Promise.all([
          api("fleet/dau", Object.assign({}, fw, { limit: "1000" })),
          api("fleet/instances", Object.assign({}, fw, { limit: "1000" })),
          api("fleet/modules", Object.assign({}, fw, { limit: "1000" })),
          api("fleet/errors", Object.assign({}, fw, { limit: "1000" })),
        ]);
        fleet.hidden = false;
        renderFleet(dau, inst, mods, errs);
      } catch (e) {
        notice("error", `Fleet: ${e.message}`);
      }
    } else {
      fleet.hidden = true;
    }
    document.body.dataset.loaded = String(Date.now());
    if (state.session && $("#session-dialog").open) showSession();
  }

  // --- live updates -------------------------------------------------------------------------------

  function live() {
    const badge = $("#live");
    if (!window.EventSource) { badge.textContent = "no live updates"; return; }
    const source = new EventSource("api/events");
    let timer = null;
    source.addEventListener("version", () => { badge.textContent = "live"; badge.className = "live on"; });
    source.addEventListener("change", () => {
      badge.classList.add("pulse");
      setTimeout(() => badge.classList.remove("pulse"), 600);
      clearTimeout(timer);
      timer = setTimeout(refresh, 100);   // a burst of commits: one refresh
    });
    source.addEventListener("error", () => { badge.textContent = "reconnecting…"; badge.className = "live"; });
  }

  // `--agent` (roder | claude-code) is a filter once the store's queries know it
  async function probeAgent() {
    try {
      const accepted = await api("parameters");
      supportsAgent = (accepted.summary || []).includes("agent");
    } catch (e) {
      supportsAgent = false;
    }
    const label = $("#agent-filter");
    label.hidden = !supportsAgent;
    if (supportsAgent) {
      const select = $("#filters").agent;
      for (const name of ["roder", "claude-code"]) select.append(el("option", { value: name, text: name }));
      select.value = state.agent;
    }
  }

  function start() {
    bindForm();
    bindSorting($("#tools-table"), "tsort", "tdir", renderTools);
    $("#sessions-more").addEventListener("click", () => { showAllSessions = !showAllSessions; renderSessions(); });
    bindSorting($("#sessions-table"), "ssort", "sdir", () => {
      if (SERVER_SORTS[state.ssort]) refresh(); else renderSessions();
    });
    const dialog = $("#session-dialog");
    $("#session-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => { if (state.session) { state.session = ""; writeState(); } });
    syncForm();
    probeAgent().then(() => refresh()).then(() => { if (state.session) showSession(); });
    live();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
