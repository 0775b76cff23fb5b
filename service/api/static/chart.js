// Line charts in SVG, drawn here: nice ticks, axis labels with units, many series overlaid,
// a hover cursor that reads every series at the same update, and decimation to the pixel
// columns of the plot (min and max kept), so 10,000 points per series stay cheap to redraw.

const NS = "http://www.w3.org/2000/svg";
const M = { top: 12, right: 18, bottom: 42, left: 62 };

export function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A number for people: 3 significant digits, k / M for large ones, "–" for none. */
export function fmt(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(digits)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(digits)}k`;
  if (a === 0) return "0";
  if (a < 1e-3) return v.toExponential(1);
  return String(+v.toPrecision(digits));
}

export function fmtInt(v) {
  return Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–";
}

function ticks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return { values: out, step };
}

function tickText(v, step) {
  if (Math.abs(v) >= 1e4) return fmt(v, 4);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toFixed(decimals);
}

/**
 * A chart of series `{key, label, color, width, dash, xs, ys}` (ys may hold null: a gap).
 * `better` ("lower" | "higher") orders the hover read-out best first.
 */
export class LineChart {
  constructor(el, { xLabel, yLabel, better = "lower", empty = "waiting for points…" }) {
    this.el = el;
    this.xLabel = xLabel;
    this.yLabel = yLabel;
    this.better = better;
    this.emptyText = empty;
    this.series = [];
    this.hot = null;
    this.frame = 0;
    this.svg = document.createElementNS(NS, "svg");
    this.tip = document.createElement("div");
    this.tip.className = "tip";
    this.tip.hidden = true;
    el.replaceChildren(this.svg, this.tip);
    this.svg.addEventListener("mousemove", (e) => this.hover(e));
    this.svg.addEventListener("mouseleave", () => this.unhover());
    this.resize = new ResizeObserver(() => this.invalidate());
    this.resize.observe(el);
  }

  destroy() {
    this.resize.disconnect();
    cancelAnimationFrame(this.frame);
  }

  setYLabel(label) {
    this.yLabel = label;
    this.invalidate();
  }

  setSeries(series) {
    this.series = series;
    this.invalidate();
  }

  highlight(key) {
    this.hot = key;
    this.el.classList.toggle("dim", key !== null);
    for (const path of this.svg.querySelectorAll("path.series")) {
      path.classList.toggle("hot", path.dataset.key === key);
    }
  }

  invalidate() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  domain() {
    let x0 = Infinity;
    let x1 = -Infinity;
    let lo = Infinity;
    let hi = -Infinity;
    let early = -Infinity;
    for (const s of this.series) {
      const n = s.xs.length;
      if (!n) continue;
      x0 = Math.min(x0, s.xs[0]);
      x1 = Math.max(x1, s.xs[n - 1]);
      // a model's first updates are often far off: leave its first tenth out of the top of
      // the range (clipped) rather than squash the rest of the curve under it
      const warm = n >= 20 ? Math.floor(n / 10) : 0;
      for (let i = 0; i < n; i++) {
        const y = s.ys[i];
        if (y === null || !Number.isFinite(y)) continue;
        lo = Math.min(lo, y);
        if (i >= warm) hi = Math.max(hi, y);
        else early = Math.max(early, y);
      }
    }
    if (lo === Infinity) return null;
    if (hi === -Infinity) hi = early;
    if (lo >= 0 && lo < 0.3 * hi) lo = 0;
    if (hi - lo < 1e-12) { hi += Math.abs(hi) * 0.1 || 1; lo -= Math.abs(lo) * 0.1 || 1; }
    const pad = (hi - lo) * 0.06;
    if (x1 === x0) { x1 += 1; x0 = Math.max(0, x0 - 1); }
    return { x0, x1, y0: lo === 0 ? 0 : lo - pad, y1: hi + pad };
  }

  render() {
    const w = this.el.clientWidth;
    const h = this.el.clientHeight;
    if (!w || !h) return;
    this.svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const total = this.series.reduce((n, s) => n + s.xs.length, 0);
    this.svg.dataset.points = String(total);
    const d = this.domain();
    const pw = w - M.left - M.right;
    const ph = h - M.top - M.bottom;
    const parts = [];
    const labels = `<text class="label" x="${M.left + pw / 2}" y="${h - 6}" text-anchor="middle">${esc(this.xLabel)}</text>`
      + `<text class="label" transform="translate(14 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(this.yLabel)}</text>`;
    if (!d) {
      this.view = null;
      this.svg.innerHTML = `${labels}<text class="empty" x="${M.left + pw / 2}" y="${M.top + ph / 2}" text-anchor="middle">${esc(this.emptyText)}</text>`;
      return;
    }
    const sx = (x) => M.left + ((x - d.x0) / (d.x1 - d.x0)) * pw;
    const sy = (y) => M.top + (1 - (y - d.y0) / (d.y1 - d.y0)) * ph;
    this.view = { d, sx, sy, pw, ph };
    const xt = ticks(d.x0, d.x1, Math.max(2, Math.floor(pw / 95)));
    const yt = ticks(d.y0, d.y1, Math.max(2, Math.floor(ph / 46)));
    parts.push('<g class="grid">');
    for (const y of yt.values) parts.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(y)}" y2="${sy(y)}"/>`);
    parts.push('</g><g class="axis">');
    parts.push(`<line class="domain" x1="${M.left}" x2="${M.left + pw}" y1="${M.top + ph}" y2="${M.top + ph}"/>`);
    for (const x of xt.values) {
      parts.push(`<text x="${sx(x)}" y="${M.top + ph + 17}" text-anchor="middle">${esc(tickText(x, xt.step))}</text>`);
    }
    for (const y of yt.values) {
      parts.push(`<text x="${M.left - 8}" y="${sy(y) + 4}" text-anchor="end">${esc(tickText(y, yt.step))}</text>`);
    }
    parts.push("</g>");
    const clip = `clip-${Math.random().toString(36).slice(2, 9)}`;
    parts.push(`<clipPath id="${clip}"><rect x="${M.left}" y="${M.top - 2}" width="${pw}" height="${ph + 4}"/></clipPath>`);
    parts.push(`<g clip-path="url(#${clip})">`);
    // thin lines first, emphasized (the leader) last: on top
    const order = [...this.series].sort((a, b) => (a.width || 1.6) - (b.width || 1.6));
    for (const s of order) {
      const path = this.path(s, sx, sy, pw);
      const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
      const hot = this.hot === s.key ? " hot" : "";
      parts.push(`<path class="series${hot}" data-key="${esc(s.key)}" data-points="${s.xs.length}" d="${path}" stroke="${s.color}" stroke-width="${s.width || 1.6}"${dash}/>`);
    }
    parts.push('</g><g class="cursor"></g>');
    parts.push(`<rect class="hit" x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="transparent"/>`);
    this.svg.innerHTML = labels + parts.join("");
    if (this.cursorAt !== undefined) this.drawCursor(this.cursorAt);
  }

  /** The SVG path of a series, decimated to first / min / max / last per pixel column. */
  path(s, sx, sy, pw) {
    const out = [];
    const n = s.xs.length;
    const dense = n > pw * 2;
    let pen = "M";
    let col = null;
    let bucket = null;
    const flush = () => {
      if (!bucket) return;
      const pts = [bucket.first, bucket.lo, bucket.hi, bucket.last]
        .filter((p, i, a) => a.indexOf(p) === i)
        .sort((a, b) => a[2] - b[2]);
      for (const [x, y] of pts) { out.push(`${pen}${x.toFixed(1)},${y.toFixed(1)}`); pen = "L"; }
      bucket = null;
    };
    for (let i = 0; i < n; i++) {
      const y = s.ys[i];
      if (y === null || !Number.isFinite(y)) { flush(); pen = "M"; continue; }
      const px = sx(s.xs[i]);
      const py = sy(y);
      if (!dense) { out.push(`${pen}${px.toFixed(1)},${py.toFixed(1)}`); pen = "L"; continue; }
      const c = Math.floor(px);
      const p = [px, py, i];
      if (c !== col) { flush(); col = c; bucket = { first: p, lo: p, hi: p, last: p }; }
      bucket.last = p;
      if (py < bucket.lo[1]) bucket.lo = p;
      if (py > bucket.hi[1]) bucket.hi = p;
    }
    flush();
    return out.join("");
  }

  hover(event) {
    if (!this.view) return;
    const box = this.svg.getBoundingClientRect();
    const px = event.clientX - box.left;
    const { d, pw } = this.view;
    if (px < M.left || px > M.left + pw) { this.unhover(); return; }
    this.cursorAt = d.x0 + ((px - M.left) / pw) * (d.x1 - d.x0);
    this.drawCursor(this.cursorAt);
  }

  unhover() {
    this.cursorAt = undefined;
    this.tip.hidden = true;
    const g = this.svg.querySelector("g.cursor");
    if (g) g.innerHTML = "";
  }

  drawCursor(x) {
    const { sx, sy, d } = this.view;
    const rows = [];
    let snapped = null;
    for (const s of this.series) {
      const i = nearest(s.xs, x);
      if (i < 0 || s.ys[i] === null || !Number.isFinite(s.ys[i])) continue;
      if (snapped === null || Math.abs(s.xs[i] - x) < Math.abs(snapped - x)) snapped = s.xs[i];
      rows.push({ s, x: s.xs[i], y: s.ys[i] });
    }
    const g = this.svg.querySelector("g.cursor");
    if (!g || snapped === null) return;
    const inside = (y) => y >= d.y0 && y <= d.y1;
    g.innerHTML = `<line x1="${sx(snapped)}" x2="${sx(snapped)}" y1="${M.top}" y2="${M.top + this.view.ph}"/>`
      + rows.filter((r) => inside(r.y)).map((r) => `<circle cx="${sx(r.x)}" cy="${sy(r.y)}" r="3.5" fill="${r.s.color}"/>`).join("");
    rows.sort((a, b) => (this.better === "lower" ? a.y - b.y : b.y - a.y));
    this.tip.innerHTML = `<div class="x">update ${fmtInt(snapped)}</div>`
      + rows.map((r) => `<div class="r"><span class="sw" style="background:${r.s.color}"></span>${esc(r.s.label)}<b>${fmt(r.y, 4)}</b></div>`).join("");
    this.tip.hidden = false;
    const left = sx(snapped);
    const tw = this.tip.offsetWidth;
    this.tip.style.left = `${left + 14 + tw > this.el.clientWidth ? left - tw - 14 : left + 14}px`;
    this.tip.style.top = `${M.top + 4}px`;
  }
}

function nearest(xs, x) {
  if (!xs.length) return -1;
  let lo = 0;
  let hi = xs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 && Math.abs(xs[lo - 1] - x) <= Math.abs(xs[lo] - x) ? lo - 1 : lo;
}

/** Put (x, y) into parallel arrays kept sorted by x; a repeated x is ignored. */
export function insertPoint(xs, ys, x, y) {
  const n = xs.length;
  if (!n || x > xs[n - 1]) { xs.push(x); ys.push(y); return true; }
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  if (xs[lo] === x) return false;
  xs.splice(lo, 0, x);
  ys.splice(lo, 0, y);
  return true;
}
