// Small SVG charts for the dashboard: no library, no build step.
// Every element is made with createElementNS and textContent (never innerHTML), so data from
// clients (names, numbers) cannot inject markup.

const NS = "http://www.w3.org/2000/svg";
// The drawing is sized to its box in CSS pixels (redrawn on resize), so text stays legible.
let W = 640, H = 240, M = { top: 16, right: 52, bottom: 36, left: 46 };
function size(host, left) {
  W = Math.max(320, Math.round(host.clientWidth || 640));
  H = 250;
  M = { top: 16, right: 52, bottom: 36, left };
}

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function frame(host, label) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, preserveAspectRatio: "xMidYMid meet", role: "presentation" });
  svg.appendChild(el("title", {}, label));
  host.replaceChildren(svg);
  return svg;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  // multipliers whose quarters are round numbers too (the y axis has 4 steps)
  for (const m of [1, 1.2, 1.6, 2, 2.4, 3.2, 4, 6, 8, 10]) if (m * p >= v * 1.0001) return m * p;
  return 10 * p;
}

export function formatBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

// x axis over rounds 1..n (at least `minRounds` slots so the first points do not fill the width)
function xAxis(svg, n) {
  const slots = Math.max(n, 5);
  const pad = 22;  // keeps the first and last points (and bars) off the axes
  const iw = W - M.left - M.right - 2 * pad;
  const x = (r) => M.left + pad + (slots === 1 ? iw / 2 : ((r - 1) / (slots - 1)) * iw);
  const step = Math.ceil(slots / 12);
  for (let r = 1; r <= slots; r += step) {
    svg.appendChild(el("text", { x: x(r), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, String(r)));
  }
  svg.appendChild(el("text", { x: M.left + pad + iw / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, "round"));
  svg.appendChild(el("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  return { x, slots };
}

function yGrid(svg, max, fmt, side = "left", grid = true, min = 0) {
  const ih = H - M.top - M.bottom;
  const y = (v) => M.top + ih - ((v - min) / (max - min)) * ih;
  for (let i = 0; i <= 4; i++) {
    const v = min + ((max - min) * i) / 4, yy = y(v);
    if (grid) svg.appendChild(el("line", { x1: M.left, x2: W - M.right, y1: yy, y2: yy, class: "grid" }));
    const tx = side === "left" ? M.left - 6 : W - M.right + 6;
    svg.appendChild(el("text", { x: tx, y: yy + 4, class: `tick ${side}`, "text-anchor": side === "left" ? "end" : "start" }, fmt(v)));
  }
  return y;
}

function polyline(svg, pts, cls) {
  if (pts.length > 1) svg.appendChild(el("polyline", { points: pts.map(([a, b]) => `${a},${b}`).join(" "), class: cls }));
}

/** The accuracy axis: the data's range, padded, on a 2.5 % grid and within 0..1 (at least
 * 10 points tall), so a run between 90 % and 97 % does not sit flat at the top of 0..100 %. */
export function accuracyRange(values) {
  const v = values.filter((a) => typeof a === "number" && Number.isFinite(a));
  if (!v.length) return [0, 1];
  const step = 0.025;
  let lo = Math.min(...v), hi = Math.max(...v);
  const pad = Math.max(0.02, (hi - lo) * 0.1);
  lo = Math.max(0, Math.floor((lo - pad) / step) * step);
  hi = Math.min(1, Math.ceil((hi + pad) / step) * step);
  if (hi - lo < 0.1) {
    if (hi >= 1) lo = Math.max(0, hi - 0.1);
    else hi = Math.min(1, lo + 0.1);
  }
  return [Number(lo.toFixed(4)), Number(hi.toFixed(4))];
}

/** The extra series of the accuracy chart, found generically in the round records: the
 * federated evaluation (federated_loss, federated_metrics) and the aggregated fit metrics
 * (fit_metrics). Keys ending in "accuracy" go on the accuracy axis, keys ending in "loss" on
 * the loss axis; others are shown in the rounds table only. */
export function extraSeries(history) {
  const found = new Map();
  const add = (label, axis, round, v) => {
    if (typeof v !== "number" || !Number.isFinite(v)) return;
    if (!found.has(label)) found.set(label, { label, axis, points: [] });
    found.get(label).points.push([round, v]);
  };
  for (const h of history) {
    if (!h || typeof h.round !== "number") continue;
    add("federated loss", "loss", h.round, h.federated_loss);
    for (const [group, metrics] of [["federated", h.federated_metrics], ["fit", h.fit_metrics]]) {
      for (const [k, v] of Object.entries(metrics || {})) {
        const axis = k.endsWith("accuracy") ? "acc" : k.endsWith("loss") ? "loss" : null;
        if (axis) add(`${group} ${k}`, axis, h.round, v);
      }
    }
  }
  return [...found.values()].sort((a, b) => a.label.localeCompare(b.label));
}

/** Accuracy (left axis, zoomed to the data) and loss (right axis) of the global model per round,
 * with the extra series of ``extraSeries`` (returned, for the legend). */
export function drawAccuracy(host, history) {
  size(host, 46);
  const svg = frame(host, "Global model accuracy and loss per round");
  const rows = history.filter((h) => h && typeof h.round === "number");
  const n = rows.length ? Math.max(...rows.map((h) => h.round)) : 0;
  const { x } = xAxis(svg, n);
  const extra = extraSeries(rows);
  const extraAcc = extra.filter((s) => s.axis === "acc").flatMap((s) => s.points.map((p) => p[1]));
  const extraLoss = extra.filter((s) => s.axis === "loss").flatMap((s) => s.points.map((p) => p[1]));
  const [accLo, accHi] = accuracyRange(rows.map((h) => h.accuracy).concat(extraAcc));
  const fine = accHi - accLo < 0.4;  // quarter steps of a narrow axis are not whole percents
  const yAcc = yGrid(svg, accHi, (v) => `${(v * 100).toFixed(fine ? 1 : 0)}%`, "left", true, accLo);
  svg.dataset.accMin = String(accLo);
  svg.dataset.accMax = String(accHi);
  const losses = rows.map((h) => h.loss).filter((v) => typeof v === "number" && Number.isFinite(v));
  const yLoss = yGrid(svg, niceMax(Math.max(0, ...losses, ...extraLoss)), (v) => v.toFixed(v < 1 ? 2 : 1), "right", false);
  extra.forEach((s, i) => {
    const yy = s.axis === "acc" ? yAcc : yLoss;
    const pts = s.points.map(([r, v]) => [x(r), yy(v)]);
    const cls = `extra s${i % 6} ${s.axis}`;
    polyline(svg, pts, `line ${cls}`);
    s.points.forEach(([r, v], j) => {
      const c = el("circle", { cx: pts[j][0], cy: pts[j][1], r: 3, class: `pt ${cls}`, "data-testid": "extra-point",
        "data-series": s.label, "data-round": r, "data-value": v });
      c.appendChild(el("title", {}, `round ${r}: ${s.label} ${s.axis === "acc" ? `${(v * 100).toFixed(2)}%` : v.toFixed(4)}`));
      svg.appendChild(c);
    });
    s.cls = `s${i % 6}`;
  });
  const acc = rows.filter((h) => typeof h.accuracy === "number").map((h) => [x(h.round), yAcc(h.accuracy), h]);
  const loss = rows.filter((h) => typeof h.loss === "number" && Number.isFinite(h.loss)).map((h) => [x(h.round), yLoss(h.loss), h]);
  polyline(svg, loss, "line loss");
  polyline(svg, acc, "line acc");
  for (const [cx, cy, h] of loss) {
    const c = el("rect", { x: cx - 3, y: cy - 3, width: 6, height: 6, class: "pt loss", "data-round": h.round });
    c.appendChild(el("title", {}, `round ${h.round}: loss ${h.loss.toFixed(4)}`));
    svg.appendChild(c);
  }
  for (const [cx, cy, h] of acc) {
    const c = el("circle", { cx, cy, r: 4.5, class: "pt acc", "data-testid": "acc-point", "data-round": h.round, "data-value": h.accuracy });
    c.appendChild(el("title", {}, `round ${h.round}: accuracy ${(h.accuracy * 100).toFixed(2)}%`));
    svg.appendChild(c);
  }
  const last = acc[acc.length - 1];
  if (last) {
    svg.appendChild(el("text", { x: last[0], y: last[1] - 10, class: "pt-label", "text-anchor": "middle" },
      `${(last[2].accuracy * 100).toFixed(1)}%`));
  }
  if (!rows.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no completed round yet"));
  }
  return extra;
}

/** Bytes in (client updates) and out (global model downloads) per round, as grouped bars. */
export function drawBytes(host, history) {
  size(host, 70);
  M.right = 16;
  const svg = frame(host, "Bytes on the wire per round");
  const rows = history.filter((h) => h && typeof h.round === "number");
  const n = rows.length ? Math.max(...rows.map((h) => h.round)) : 0;
  const { x, slots } = xAxis(svg, n);
  const top = Math.max(0, ...rows.flatMap((h) => [h.bytes_in || 0, h.bytes_out || 0]));
  const unit = 1024 ** Math.max(0, Math.min(3, Math.floor(Math.log(Math.max(top, 1)) / Math.log(1024))));
  const max = top > 0 ? niceMax(top / unit) * unit : 1024;  // round numbers in KiB / MiB, not in bytes
  const y = yGrid(svg, max, formatBytes);
  const bw = Math.max(3, Math.min(18, (W - M.left - M.right) / slots / 3));
  for (const h of rows) {
    for (const [key, dx, cls] of [["bytes_in", -bw, "bar in"], ["bytes_out", 0, "bar out"]]) {
      const v = h[key] || 0, yv = y(v);
      const r = el("rect", { x: x(h.round) + dx, y: yv, width: bw, height: H - M.bottom - yv, class: cls,
        "data-testid": `bytes-${key === "bytes_in" ? "in" : "out"}`, "data-round": h.round, "data-value": v });
      r.appendChild(el("title", {}, `round ${h.round}: ${key === "bytes_in" ? "in" : "out"} ${formatBytes(v)} (${v} B)`));
      svg.appendChild(r);
    }
  }
  if (!rows.length) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no completed round yet"));
  }
}
