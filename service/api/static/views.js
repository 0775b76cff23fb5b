// The dashboard's two views. A race: its members' curves overlaid (rolling metric against
// updates), the leader marked, the ranking. A model: its loss and metric curves, speed,
// rejected updates, spec, and the health of its normalization statistics. Each reads the
// history once, then follows the live feed from where the history ends (Last-Event-ID: a
// model's last version; a race's, each member's last version in member order).

import { LineChart, esc, fmt, fmtInt, insertPoint } from "./chart.js";
import { Feed, getJSON } from "./feed.js";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const HISTORY = "curve?after=0&limit=10000";
const LOWER_IS_BETTER = new Set(["MAE", "RMSE", "LogLoss"]);
const UNITS = { MAE: "target units", RMSE: "target units", LogLoss: "nats", Accuracy: "fraction" };
// one colour per method, so a method looks the same in every race; by position on a clash
const NORM_COLORS = {
  streaming: "#5aa9ff", layer: "#f28e2b", online: "#3ecf8e", recurrent_batch: "#e15759",
  batch_rnn: "#b07aa1", weight: "#4fc4cf", cosine: "#edc948", none: "#9aa5b1",
};
const PALETTE = Object.values(NORM_COLORS).concat(["#ff9da7", "#9c755f", "#8cd17d", "#86bcb6"]);
const NAMES = {
  streaming: "Streaming Norm", layer: "Layer Norm", online: "Online Norm",
  recurrent_batch: "Recurrent BN", batch_rnn: "BN-RNN", weight: "Weight Norm",
  cosine: "Cosine Norm", none: "no norm",
};
// what each statistics buffer is (models/health.py names them by their module path)
const HINTS = {
  L: "long-term statistics", S: "short-term statistics", GL: "long-term gradient",
  GS: "short-term gradient", counters: "n, m, steps…", running_mean: "running mean",
  running_var: "running variance", mean: "running mean", var: "running variance",
  u: "backward control u (0 while off)", v: "backward control v (0 while off)",
};

export function normLabel(norm) {
  if (!norm) return "";
  const method = typeof norm === "string" ? norm : norm.method;
  const preset = typeof norm === "object" && norm.preset ? ` (${norm.preset})` : "";
  return `${method}${preset}`;
}

const methodOf = (norm) => (typeof norm === "string" ? norm : norm?.method);
const metricOf = (point, metric) => point.metrics?.[metric]?.rolling ?? null;

function firstMetric(metrics, task) {
  const names = Object.keys(metrics || {}).filter((k) => k !== "n");
  return names[0] || (task === "regression" ? "MAE" : "Accuracy");
}

function yLabel(metric) {
  return `rolling ${metric} (${UNITS[metric] || "metric units"})`;
}

class View {
  constructor(name, hooks) {
    this.name = name;
    this.hooks = hooks;
    this.life = new AbortController();
    this.timers = [];
    this.feed = null;
  }

  follow(path, lastId, onEvent) {
    this.feed = new Feed(path, {
      onEvent, lastId, onState: (state, error) => this.hooks.feedState(this, state, error),
    }).start();
  }

  every(ms, fn) {
    this.timers.push(setInterval(() => fn().catch((e) => this.hooks.explain(e)), ms));
  }

  stop() {
    this.life.abort();
    this.feed?.stop();
    this.hooks.feedState(this, null);
    for (const t of this.timers) clearInterval(t);
    for (const c of this.charts || []) c.destroy();
  }
}

export class RaceView extends View {
  async start() {
    $("race-title").textContent = this.name;
    for (const id of ["race-leader", "race-sub", "race-rule", "race-legend", "race-rows"]) {
      $(id).textContent = "";
      delete $(id).dataset.html;
    }
    this.series = new Map();
    this.chart = new LineChart($("race-chart"), { xLabel: "updates", yLabel: "rolling metric" });
    this.charts = [this.chart];
    this.wire();
    const info = await getJSON(`/races/${enc(this.name)}`, this.life.signal);
    this.apply(info);
    await Promise.allSettled(info.members.map(async (m) => { // a member deleted alone: no curve
      const page = await getJSON(`/models/${enc(m.name)}/${HISTORY}`, this.life.signal);
      for (const point of page.points) this.point(m.name, point, false);
    }));
    const cursor = info.members.map((m) => this.series.get(m.name).latest?.version ?? 0);
    this.follow(`/races/${enc(this.name)}/live`, cursor.join(","),
      (point) => this.point(point.model, point));
    this.chart.invalidate();
    this.table();
    this.every(3000, async () => this.apply(await getJSON(`/races/${enc(this.name)}`, this.life.signal)));
  }

  apply(info) {
    this.info = info;
    this.metric = info.metric;
    const lower = LOWER_IS_BETTER.has(this.metric);
    this.chart.better = lower ? "lower" : "higher";
    this.chart.setYLabel(yLabel(this.metric));
    if (!this.series.size) {
      const methods = info.members.map((m) => methodOf(m.norm));
      const distinct = new Set(methods).size === methods.length;
      info.members.forEach((m, i) => {
        const color = (distinct && NORM_COLORS[methods[i]]) || PALETTE[i % PALETTE.length];
        const short = this.short(m.name);
        const label = short === methodOf(m.norm) ? short : `${short} · ${normLabel(m.norm)}`;
        this.series.set(m.name, { key: m.name, label, color, xs: [], ys: [], latest: null });
      });
    }
    for (const s of this.series.values()) s.width = s.key === info.leader ? 3.4 : 1.7;
    this.chart.setSeries([...this.series.values()]);
    $("race-leader").textContent = info.leader ? `leader: ${this.short(info.leader)}` : "";
    $("race-metric-head").textContent = `rolling ${this.metric}`;
    $("race-sub").textContent = `${info.members.length} members · ${this.metric}, ${lower ? "lower" : "higher"} is better`;
    if (info.margin !== undefined) {
      $("race-rule").textContent = `· the leader changes when a challenger beats it by ${fmt(100 * info.margin)} %`
        + (info.min_updates ? `, after ${fmtInt(info.min_updates)} updates` : "");
    }
    this.legend();
    this.table();
  }

  /** A member's name without the race's (default names are `{race}.{norm method}`). */
  short(member) {
    return member.startsWith(`${this.name}.`) ? member.slice(this.name.length + 1) : member;
  }

  point(member, point, draw = true) {
    const s = this.series?.get(member);
    if (!s) return;
    insertPoint(s.xs, s.ys, point.version, metricOf(point, this.metric));
    if (!s.latest || point.version >= s.latest.version) s.latest = point;
    if (draw) { this.chart.invalidate(); this.table(); }
  }

  legend() {
    const html = this.info.members.map((m) => {
      const s = this.series.get(m.name);
      const leader = m.name === this.info.leader ? " leader" : "";
      return `<span class="item${leader}" data-key="${esc(m.name)}"><span class="sw" style="background:${s.color}"></span>`
        + `<span class="name" title="${esc(m.name)}">${esc(this.short(m.name))}</span><span class="norm">${esc(NAMES[methodOf(m.norm)] || normLabel(m.norm))}</span></span>`;
    }).join("");
    const el = $("race-legend");
    if (el.dataset.html !== html) { el.innerHTML = html; el.dataset.html = html; }
  }

  table() {
    if (!this.info) return;
    const lower = LOWER_IS_BETTER.has(this.metric);
    const rows = this.info.members.map((m) => {
      const s = this.series.get(m.name);
      const latest = s.latest;
      const updates = Math.max(m.updates ?? m.version ?? 0, latest ? latest.version : 0);
      const fresh = latest && latest.version > (m.version ?? 0);
      const value = fresh ? metricOf(latest, this.metric) : (m.rolling ?? m.metrics?.[this.metric]?.rolling ?? null);
      return { m, s, updates, value };
    }).sort((a, b) => (a.m.rank ?? 1e9) - (b.m.rank ?? 1e9));
    const values = rows.map((r) => r.value).filter((v) => v !== null && Number.isFinite(v));
    const best = lower ? Math.min(...values) : Math.max(...values);
    const html = rows.map(({ m, s, updates, value }) => {
      const leader = m.name === this.info.leader;
      const share = value === null || !values.length ? 0
        : Math.max(0.02, Math.min(1, lower ? (best / value || 0) : (value / best || 0)));
      return `<tr data-member="${esc(m.name)}"${leader ? ' class="leader"' : ""}>`
        + `<td class="num">${m.rank ?? "–"}</td>`
        + `<td><div class="who"><span class="sw" style="background:${s.color}"></span><span title="${esc(m.name)}">${esc(this.short(m.name))}</span>${leader ? ' <span class="badge leader">leader</span>' : ""}</div></td>`
        + `<td>${esc(normLabel(m.norm))}</td><td class="num updates">${fmtInt(updates)}</td>`
        + `<td class="num">${fmt(value, 4)}</td>`
        + `<td><div class="bar"><i style="width:${(100 * share).toFixed(1)}%;background:${s.color}"></i></div></td></tr>`;
    }).join("");
    const body = $("race-rows");
    if (body.dataset.html !== html) { body.innerHTML = html; body.dataset.html = html; }
  }

  /** Rows and legend items lead to a member's view and light up its line (delegated: the
   * rows are redrawn as points arrive). */
  wire() {
    const member = (event) => event.target.closest("[data-member], [data-key]");
    const body = $("race-rows");
    body.onclick = (event) => {
      const row = member(event);
      if (row) this.hooks.open(`#/model/${enc(row.dataset.member)}`);
    };
    for (const el of [body, $("race-legend")]) {
      el.onmouseover = (event) => {
        const hit = member(event);
        this.chart.highlight(hit ? hit.dataset.member || hit.dataset.key : null);
      };
      el.onmouseleave = () => this.chart.highlight(null);
    }
  }
}

export class ModelView extends View {
  async start() {
    $("model-title").textContent = this.name;
    for (const id of ["model-norm", "model-sub", "health", "health-version", "spec"]) {
      $(id).textContent = "";
      delete $(id).dataset.html;
    }
    this.points = [];
    this.loss = { key: "loss", label: "per point", color: "rgba(242, 142, 43, .35)", width: 1.2, xs: [], ys: [] };
    this.smooth = { key: "smooth", label: "smoothed", color: "#f28e2b", width: 2, xs: this.loss.xs, ys: [] };
    this.rolling = { key: "rolling", label: "rolling (last 100)", color: "#5aa9ff", width: 2, xs: [], ys: [] };
    this.cumulative = { key: "value", label: "since the start", color: "#9aa5b1", width: 1.4, dash: "4 4", xs: [], ys: [] };
    const info = await getJSON(`/models/${enc(this.name)}`, this.life.signal);
    this.metric = firstMetric(info.metrics, info.task);
    const lossUnit = info.task === "regression" ? "MSE, target units²" : "cross-entropy, nats";
    this.lossChart = new LineChart($("loss-chart"), { xLabel: "updates", yLabel: `loss (${lossUnit})` });
    this.metricChart = new LineChart($("metric-chart"), {
      xLabel: "updates", yLabel: `${this.metric} (${UNITS[this.metric] || "metric units"})`,
      better: LOWER_IS_BETTER.has(this.metric) ? "lower" : "higher",
    });
    this.charts = [this.lossChart, this.metricChart];
    this.lossChart.setSeries([this.loss, this.smooth]);
    this.metricChart.setSeries([this.cumulative, this.rolling]);
    $("metric-title").textContent = this.metric;
    $("t-metric-name").textContent = `rolling ${this.metric}`;
    this.describe(info);
    const page = await getJSON(`/models/${enc(this.name)}/${HISTORY}`, this.life.signal);
    for (const point of page.points) this.add(point, false);
    this.follow(`/models/${enc(this.name)}/live`, String(page.last), (point) => this.add(point, true));
    this.drawn();
    await this.health();
    this.every(4000, async () => this.describe(await getJSON(`/models/${enc(this.name)}`, this.life.signal)));
    this.every(5000, () => this.health());
    this.every(1000, async () => this.tiles()); // "idle" shows up even when nothing arrives
  }

  add(point, draw) {
    const i = this.points.length;
    if (i && point.version <= this.points[i - 1].version) {
      if (this.points.some((p) => p.version === point.version)) return;
      this.points.push(point);
      this.points.sort((a, b) => a.version - b.version);
    } else {
      this.points.push(point);
    }
    insertPoint(this.loss.xs, this.loss.ys, point.version, point.loss ?? null);
    insertPoint(this.rolling.xs, this.rolling.ys, point.version, metricOf(point, this.metric));
    insertPoint(this.cumulative.xs, this.cumulative.ys, point.version, point.metrics?.[this.metric]?.value ?? null);
    if (draw) this.drawn();
  }

  drawn() {
    // an exponential moving average over the points (the raw loss of 10 updates is noisy)
    let ema = null;
    this.smooth.ys = this.loss.ys.map((y) => {
      if (y === null || !Number.isFinite(y)) return ema;
      ema = ema === null ? y : ema + 0.15 * (y - ema);
      return ema;
    });
    this.lossChart.invalidate();
    this.metricChart.invalidate();
    this.tiles();
  }

  /** Updates per second over the last ~30 s of points (version and time of each). */
  rate() {
    const p = this.points;
    if (p.length < 2) return null;
    const last = p[p.length - 1];
    if (Date.now() / 1000 - last.time > 30) return 0; // idle
    let j = p.length - 2;
    while (j > 0 && last.time - p[j - 1].time <= 30) j--;
    const dt = last.time - p[j].time;
    return dt > 0 ? (last.version - p[j].version) / dt : null;
  }

  tiles() {
    const last = this.points[this.points.length - 1];
    const updates = Math.max(this.info?.updates ?? 0, last ? last.version : 0);
    $("t-updates").textContent = fmtInt(updates);
    const n = this.points.length;
    const every = n >= 2 ? this.points[n - 1].version - this.points[n - 2].version : null;
    $("loss-every").textContent = every ? `mean of ${every} updates` : "per point";
    const rate = this.rate();
    $("t-rate").textContent = rate === 0 ? "idle" : fmt(rate);
    $("t-metric").textContent = last ? fmt(metricOf(last, this.metric), 4) : "–";
    $("t-loss").textContent = last ? fmt(last.loss, 4) : "–";
    const rejected = last ? last.rejected ?? 0 : null;
    $("t-rejected").textContent = rejected === null ? "–" : fmtInt(rejected);
    $("t-rejected").classList.toggle("bad", rejected > 0);
  }

  describe(info) {
    this.info = info;
    $("model-norm").textContent = NAMES[methodOf(info.norm)] || normLabel(info.norm);
    $("model-sub").textContent = `${info.task} · ${info.cell.toUpperCase()} · version ${fmtInt(info.version)}`;
    const norm = Object.entries(info.norm || {}).filter(([k, v]) => k !== "method" && v !== null)
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
    const opt = info.optimizer || {};
    const optRest = Object.entries(opt).filter(([k, v]) => k !== "name" && k !== "lr" && v !== null)
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
    const rows = [
      ["task", info.task + (info.n_classes ? ` (${info.n_classes} classes)` : "")],
      ["inputs", info.features ? info.features.join(", ") : `${info.n_features} features`],
      ["cell", `${info.cell} · ${info.num_layers ?? 1} layer(s)`],
      ["hidden size", info.hidden_size],
      ["norm", `${methodOf(info.norm)}${norm ? ` (${norm})` : ""}`],
      ["optimizer", `${opt.name} lr=${opt.lr}${optRest ? `, ${optRest}` : ""}`],
      ["window", `${info.window} steps (truncated BPTT)`],
      ["seed", info.seed],
    ];
    const html = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    if ($("spec").dataset.html !== html) { $("spec").innerHTML = html; $("spec").dataset.html = html; }
    this.tiles();
  }

  async health() {
    const state = await getJSON(`/models/${enc(this.name)}/norm-state`, this.life.signal);
    $("health-version").textContent = `at version ${fmtInt(state.version)}`;
    const el = $("health");
    if (!state.buffers.length) {
      el.innerHTML = `<p class="muted">${esc(NAMES[state.norm.method] || state.norm.method)} keeps no statistics `
        + "between samples: there is nothing here that can drift or go stale.</p>";
      return;
    }
    const bad = state.buffers.filter((b) => !b.finite).length;
    const summary = bad
      ? `<span class="dot bad"></span><b>${bad} of ${state.buffers.length} buffers hold NaN or ∞</b>`
      : `<span class="dot ok"></span>all ${state.buffers.length} buffers finite`;
    const rows = state.buffers.map((b) => {
      const cut = b.name.lastIndexOf(".");
      const site = b.name.slice(0, cut).replace(/^stack\./, "");
      const leaf = b.name.slice(cut + 1);
      return `<tr data-buffer="${esc(b.name)}"><td class="name" title="${esc(HINTS[leaf] || "")}"><span class="dot ${b.finite ? "ok" : "bad"}"></span>`
        + `<span class="site">${esc(site)}.</span>${esc(leaf)}</td><td class="muted small">${esc(HINTS[leaf] || "")}</td>`
        + `<td class="num">${esc(b.shape.join("×"))}</td><td class="num">${fmt(b.min, 4)}</td>`
        + `<td class="num">${fmt(b.mean, 4)}</td><td class="num">${fmt(b.max, 4)}</td></tr>`;
    }).join("");
    el.innerHTML = `<div class="health-sum">${summary}</div><table class="health"><thead><tr><th>buffer</th><th></th>`
      + `<th class="num">shape</th><th class="num">min</th><th class="num">mean</th><th class="num">max</th></tr></thead><tbody>${rows}</tbody></table>`;
  }
}
