// fedcore dashboard: live view of one federation over its REST side.
// State comes from the server-sent event stream /events (a `snapshot` event, then `client`,
// `round_started`, `round_finished` and `status` events); when the stream is down the page polls
// /status, /clients and /history instead. Control calls carry the admin token as a Bearer token.
// Data from clients is only ever written with textContent, never as markup.

import { drawAccuracy, drawBytes, formatBytes } from "./chart.js";

const $ = (id) => document.getElementById(id);
const STATES = ["join", "ready", "training", "update", "finish", "left"];
const TOKEN_KEY = "fedcore.adminToken";
const POLL_MS = 2000;          // polling period while the event stream is down
const CLIENTS_REFRESH_MS = 4000; // last-seen refresh while the stream is live
const ACTIVITY_MAX = 60;

const model = {
  status: {},
  clients: new Map(),       // client_id -> row from the server
  history: [],
  selected: null,           // Set of client names in the open round (from round_started), or null if unknown
  live: false,
  gotSnapshot: false,
  offset: -Infinity,        // estimate of (server monotonic clock - performance.now()/1000)
  autorunTarget: null,      // the last autorun target seen while autorun was on
  autorunDone: null,        // {round, target} once an autorun reached its target
};

// ------------------------------------------------------------------ helpers
function text(node, value) { if (node.textContent !== value) node.textContent = value; }
const perfNow = () => performance.now() / 1000;
const pct = (v) => (typeof v === "number" ? `${(v * 100).toFixed(2)}%` : "–");

// Clients' last_seen / joined_at are on the server's monotonic clock. Every row we receive was seen
// at or before "now" on that clock, so max(last_seen - local now) is a lower bound of the offset
// that gets tight as soon as any live client sends a heartbeat.
function observeClock(row) {
  if (typeof row.last_seen === "number") model.offset = Math.max(model.offset, row.last_seen - perfNow());
}
// If the server says what its clock reads (status.clock), that is exact.
function observeServerClock(s) {
  if (s && typeof s.clock === "number") model.offset = Math.max(model.offset, s.clock - perfNow());
}
function ago(serverTime) {
  if (typeof serverTime !== "number" || !Number.isFinite(model.offset)) return "–";
  const s = Math.max(0, perfNow() + model.offset - serverTime);
  if (s < 1.5) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function wallAgo(epoch) {
  if (typeof epoch !== "number") return "never";
  const d = new Date(epoch * 1000);
  const s = Math.max(0, Date.now() / 1000 - epoch);
  const rel = s < 1.5 ? "just now" : s < 90 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`;
  return `${d.toLocaleTimeString()} (${rel})`;
}

function logActivity(message, kind = "info") {
  const li = document.createElement("li");
  li.className = `act ${kind}`;
  const t = document.createElement("time");
  t.textContent = new Date().toLocaleTimeString();
  li.append(t, document.createTextNode(` ${message}`));
  li.dataset.kind = kind;
  const list = $("activity");
  list.prepend(li);
  while (list.children.length > ACTIVITY_MAX) list.lastElementChild.remove();
}

// ------------------------------------------------------------------ derived state
function activeClients() { return [...model.clients.values()].filter((c) => c.state !== "left"); }

function isSelected(c) {
  const cur = model.status.current_round;
  if (model.selected) return model.selected.has(c.name);
  // Selection unknown (page opened mid-round, or polling): only a client that has not even reached
  // "ready" is surely not in the round; a ready one may be selected and about to be told to train.
  return c.state !== "join" || (Array.isArray(c.rounds) && c.rounds.includes(cur));
}

// A client that is ready (or just joined / finished) while a round it is not part of runs: it
// waits and takes part from the next round (the REST paper's Fig. 6).
function isWaiting(c) {
  return Boolean(model.status.round_open) && ["join", "ready", "finish"].includes(c.state) && !isSelected(c);
}

// ------------------------------------------------------------------ rendering
function renderStatus() {
  const s = model.status;
  observeServerClock(s);
  const on = Boolean(s.autorun);
  const badge = $("st-autorun");
  text(badge, on ? "on" : "off");
  badge.dataset.on = String(on);
  text($("st-rounds-left"), on ? `${s.rounds_left ?? 0} round(s) left · target ${s.autorun_target}` : autorunEnd(s));
  const open = Boolean(s.round_open);
  const current = open ? s.current_round : s.round ?? 0;
  text($("st-current-round"), String(current ?? 0));
  $("st-current-round").dataset.open = String(open);
  text($("st-round-phase"), open ? `in progress · ${s.submitted ?? 0}/${s.selected ?? 0} updates` : (s.round ? "done" : "not started"));
  text($("st-round"), String(s.round ?? 0));
  const n = model.clients.size ? activeClients().length : s.num_clients ?? 0;
  text($("st-num-clients"), String(n));
  const ready = model.clients.size ? activeClients().filter((c) => c.state === "ready" || c.state === "finish").length : s.ready ?? 0;
  text($("st-ready"), `${ready} ready · needs ${s.min_clients ?? "?"}`);
  text($("st-accuracy"), pct(s.accuracy));
  text($("st-loss"), typeof s.loss === "number" ? `loss ${s.loss.toFixed(4)}` : "");
  text($("st-last-updated"), wallAgo(s.last_updated));
  const w = s.wire;
  text($("st-wire"), w ? `${w.dtype} · ${w.codec}${w.level != null ? `-${w.level}` : ""} · ${formatBytes(s.payload_bytes)} model · ${s.strategy ?? ""}` : "–");
}

// What an autorun that is no longer on came to: "finished N/N" when it reached its target.
function autorunEnd(s) {
  const done = model.autorunDone;
  if (done) return `finished ${done.round}/${done.target}`;
  if (s.finished) return `finished ${s.round ?? 0}/${s.round ?? 0}`;
  return "";
}

// Remember the target while autorun is on, and notice when it is reached.
function trackAutorun(s) {
  if (s.autorun && typeof s.autorun_target === "number") {
    model.autorunTarget = s.autorun_target;
    model.autorunDone = null;
  } else if (!s.autorun && model.autorunTarget != null) {
    const target = model.autorunTarget;
    model.autorunTarget = null;
    if ((s.round ?? 0) >= target) {
      model.autorunDone = { round: s.round, target };
      logActivity(`autorun finished ${s.round}/${target}`, "control");
      return true;
    }
  }
  return false;
}

// A client's local metrics from the last round it sent an update in (RoundRecord.client_metrics).
function lastMetrics(name) {
  for (let i = model.history.length - 1; i >= 0; i--) {
    const m = model.history[i].client_metrics;
    if (m && m[name]) return { round: model.history[i].round, metrics: m[name] };
  }
  return null;
}

const METRIC_ORDER = ["val_accuracy", "accuracy", "val_loss", "train_loss", "loss"];
function formatMetrics(metrics) {
  const keys = Object.keys(metrics).sort((a, b) => {
    const ia = METRIC_ORDER.indexOf(a), ib = METRIC_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return keys.map((k) => {
    const v = metrics[k];
    if (typeof v !== "number") return `${k} –`;
    return k.endsWith("accuracy") ? `${k} ${pct(v)}` : `${k} ${v.toFixed(4)}`;
  });
}

function cell(tr, key) {
  let td = tr.querySelector(`[data-col="${key}"]`);
  if (!td) {
    td = document.createElement("td");
    td.dataset.col = key;
    td.setAttribute("data-testid", `client-${key}`);
    tr.appendChild(td);
  }
  return td;
}

function renderClientRow(tr, c) {
  const waiting = isWaiting(c);
  tr.dataset.name = c.name;
  tr.dataset.state = c.state;
  tr.dataset.waiting = String(waiting);
  tr.dataset.transport = c.transport;
  text(cell(tr, "name"), c.name);
  const tagCell = cell(tr, "tags");
  const tags = Array.isArray(c.tags) ? c.tags : [];
  if (tagCell.dataset.tags !== tags.join("\u0000")) {
    tagCell.dataset.tags = tags.join("\u0000");
    tagCell.replaceChildren(...tags.map((t) => {
      const span = document.createElement("span");
      span.className = "tag label";
      span.setAttribute("data-testid", "client-tag");
      span.textContent = t;
      return span;
    }));
  }
  const id = cell(tr, "id");
  text(id, c.client_id.slice(0, 8));
  id.title = `de-identified id ${c.client_id}`;
  id.className = "mono";
  const tp = cell(tr, "transport");
  if (!tp.firstChild) tp.appendChild(document.createElement("span"));
  tp.firstChild.className = `tag ${c.transport}`;
  text(tp.firstChild, c.transport);
  // An admin-requested switch waits for the client's next round: show it until the server says done.
  const wanted = c.wanted_transport && c.wanted_transport !== c.transport ? c.wanted_transport : null;
  let pending = tp.querySelector('[data-testid="client-switch-pending"]');
  if (wanted && !pending) {
    pending = document.createElement("span");
    pending.className = "chip pending";
    pending.setAttribute("data-testid", "client-switch-pending");
    tp.appendChild(pending);
  } else if (!wanted && pending) {
    pending.remove();
    pending = null;
  }
  tr.dataset.wantedTransport = wanted || "";
  if (pending) {
    text(pending, `→ ${wanted} (next round)`);
    pending.title = `the admin asked ${c.name} to switch to ${wanted}; it moves before its next round`;
  }

  const st = cell(tr, "state");
  if (!st.firstChild) {
    const chip = document.createElement("span");
    const wait = document.createElement("span");
    wait.className = "chip waiting";
    wait.setAttribute("data-testid", "client-waiting");
    wait.textContent = "waiting (next round)";
    st.append(chip, wait);
  }
  const chip = st.firstChild;
  chip.className = `chip state-${STATES.includes(c.state) ? c.state : "unknown"}`;
  chip.setAttribute("data-testid", "client-state-chip");
  text(chip, c.state);
  st.lastChild.hidden = !waiting;

  const rounds = Array.isArray(c.rounds) ? c.rounds : [];
  const rc = cell(tr, "rounds");
  text(rc, rounds.length ? `${rounds.length} (${compactRounds(rounds)})` : "0");
  rc.dataset.count = String(rounds.length);
  const mc = cell(tr, "metrics");
  const last = lastMetrics(c.name);
  mc.className = "metrics";
  text(mc, last ? formatMetrics(last.metrics).join(" · ") : "–");
  mc.title = last ? `local metrics of round ${last.round}` : "no update from this client yet";
  const seen = cell(tr, "last-seen");
  text(seen, ago(c.last_seen));
  const smp = cell(tr, "samples");
  smp.className = "num";
  text(smp, String(c.num_samples ?? 0));

  const act = cell(tr, "actions");
  let btn = act.querySelector("button");
  if (!btn) {
    btn = document.createElement("button");
    btn.type = "button";
    btn.className = "small danger";
    btn.textContent = "Disconnect";
    btn.setAttribute("data-testid", "btn-disconnect");
    btn.addEventListener("click", () => disconnectClient(tr.dataset.clientId, tr.dataset.name));
    act.appendChild(btn);
  }
  btn.setAttribute("aria-label", `Disconnect ${c.name}`);
  btn.disabled = c.state === "left";
}

function compactRounds(rounds) {
  const out = [];
  let start = rounds[0], prev = rounds[0];
  for (const r of [...rounds.slice(1), null]) {
    if (r === prev + 1) { prev = r; continue; }
    out.push(start === prev ? `${start}` : `${start}–${prev}`);
    start = prev = r;
  }
  return out.join(", ");
}

function renderClients() {
  const body = $("clients-body");
  const rows = [...model.clients.values()].sort((a, b) =>
    (a.state === "left") - (b.state === "left") || a.name.localeCompare(b.name, undefined, { numeric: true }) || a.joined_at - b.joined_at);
  const existing = new Map([...body.children].map((tr) => [tr.dataset.clientId, tr]));
  rows.forEach((c, i) => {
    let tr = existing.get(c.client_id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.clientId = c.client_id;
      tr.setAttribute("data-testid", "client-row");
    }
    existing.delete(c.client_id);
    renderClientRow(tr, c);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const tr of existing.values()) tr.remove();
  $("clients-empty").hidden = model.clients.size > 0;
  const counts = {};
  for (const c of model.clients.values()) counts[c.state] = (counts[c.state] || 0) + 1;
  text($("cl-summary"), STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(" · "));
}

function renderLastSeen() {
  for (const tr of $("clients-body").children) {
    const c = model.clients.get(tr.dataset.clientId);
    if (c) text(cell(tr, "last-seen"), ago(c.last_seen));
  }
  text($("st-last-updated"), wallAgo(model.status.last_updated));
}

function renderHistory() {
  const body = $("history-body");
  const rows = [...model.history].sort((a, b) => b.round - a.round);
  body.replaceChildren(...rows.map((h) => {
    const tr = document.createElement("tr");
    tr.setAttribute("data-testid", "history-row");
    tr.dataset.round = String(h.round);
    const left = [...(h.dropped || []), ...(h.stragglers || [])];
    const cells = [
      [String(h.round), "num"], [(h.participants || []).join(", ") || "none", ""], [left.join(", ") || "–", "muted"],
      [pct(h.accuracy), "num"], [typeof h.loss === "number" ? h.loss.toFixed(4) : "–", "num"],
      [formatBytes(h.bytes_in), "num"], [formatBytes(h.bytes_out), "num"],
      [typeof h.duration_s === "number" ? `${h.duration_s.toFixed(2)} s` : "–", "num"],
    ];
    for (const [v, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = v;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    const per = h.client_metrics || {};
    const td = document.createElement("td");
    td.className = "metrics";
    td.setAttribute("data-testid", "history-client-metrics");
    const names = Object.keys(per).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    if (!names.length) td.textContent = "–";
    for (const name of names) {
      const line = document.createElement("div");
      const who = document.createElement("strong");
      who.textContent = name;
      line.append(who, document.createTextNode(` ${formatMetrics(per[name]).join(" · ")}`));
      td.appendChild(line);
    }
    tr.appendChild(td);
    tr.appendChild(roundMetricsCell(h));
    return tr;
  }));
  drawAccuracyWithLegend();
  drawBytes($("bytes-chart"), model.history);
}

/** Fit metrics (aggregated), the federated evaluation and whatever the strategy reports
 * (strategy_metrics, e.g. a DP epsilon), one line each, for any keys. */
function roundMetricsCell(h) {
  const td = document.createElement("td");
  td.className = "metrics";
  td.setAttribute("data-testid", "history-round-metrics");
  const fed = { ...(h.federated_metrics || {}) };
  if (typeof h.federated_loss === "number") fed.loss = h.federated_loss;
  const groups = [["fit", h.fit_metrics || {}],
    [`federated (${(h.evaluated || []).length} client(s))`, Object.keys(fed).length ? fed : {}],
    ["strategy", h.strategy_metrics || {}]];
  for (const [label, metrics] of groups) {
    if (!Object.keys(metrics).length) continue;
    const line = document.createElement("div");
    line.dataset.group = label.split(" ")[0];
    const who = document.createElement("strong");
    who.textContent = label;
    line.append(who, document.createTextNode(` ${formatMetrics(metrics).join(" · ")}`));
    td.appendChild(line);
  }
  if (!td.childNodes.length) td.textContent = "–";
  return td;
}

function drawAccuracyWithLegend() {
  const extra = drawAccuracy($("accuracy-chart"), model.history) || [];
  const legend = $("accuracy-extra-legend");
  if (!legend) return;
  legend.replaceChildren(...extra.map((s) => {
    const item = document.createElement("span");
    const key = document.createElement("span");
    key.className = `key extra ${s.cls}`;
    item.append(key, document.createTextNode(`${s.label} `));
    return item;
  }));
}

function renderAll() { renderStatus(); renderHistory(); renderClients(); }

// ------------------------------------------------------------------ applying server data
function setClients(rows, { keepStates = false, logChanges = false } = {}) {
  const next = new Map();
  for (const r of rows) {
    observeClock(r);
    const old = model.clients.get(r.client_id);
    if (logChanges && !keepStates) {
      if (!old) logActivity(`${r.name} joined over ${r.transport}`, "join");
      else if (old.state !== r.state) logActivity(`${r.name}: ${old.state} → ${r.state}`, r.state === "left" ? "left" : "state");
    }
    // While the stream is live it is the source of truth for states; a poll answer may be older.
    next.set(r.client_id, keepStates && old ? { ...r, state: old.state } : r);
  }
  if (keepStates) for (const [id, old] of model.clients) if (!next.has(id)) next.set(id, old);
  model.clients = next;
}

function applyClient(row) {
  observeClock(row);
  const old = model.clients.get(row.client_id);
  model.clients.set(row.client_id, row);
  if (!old) logActivity(`${row.name} joined over ${row.transport}`, "join");
  else if (old.state !== row.state) {
    logActivity(`${row.name}: ${old.state} → ${row.state}`, row.state === "left" ? "left" : "state");
  }
  model.status.num_clients = activeClients().length;
  renderClients();
  renderStatus();
  scheduleStatusRefresh();
}

function applyHistoryEntry(entry) {
  model.history = model.history.filter((h) => h.round !== entry.round).concat([entry]).sort((a, b) => a.round - b.round);
}

const handlers = {
  snapshot(data) {
    model.gotSnapshot = true;
    model.status = data.status || {};
    trackAutorun(model.status);
    model.history = (data.history || []).slice().sort((a, b) => a.round - b.round);
    setClients(data.clients || []);
    model.selected = Array.isArray(model.status.selected_clients) ? new Set(model.status.selected_clients) : null;
    renderAll();
  },
  client: applyClient,
  round_started(data) {
    model.selected = new Set(data.clients || []);
    Object.assign(model.status, { current_round: data.round, round_open: true, selected: model.selected.size, submitted: 0 });
    logActivity(`round ${data.round} started with ${(data.clients || []).join(", ") || "no client"}`, "round");
    renderStatus();
    renderClients();
    scheduleStatusRefresh();
  },
  round_finished(entry) {
    applyHistoryEntry(entry);
    Object.assign(model.status, {
      round: entry.round, round_open: false, current_round: null, accuracy: entry.accuracy, loss: entry.loss,
      last_updated: entry.finished_at,
    });
    model.selected = null;
    const left = [...(entry.dropped || []), ...(entry.stragglers || [])];
    logActivity(`round ${entry.round} finished: accuracy ${pct(entry.accuracy)}, ${entry.num_participants ?? (entry.participants || []).length} participant(s)` +
      (left.length ? `, left out: ${left.join(", ")}` : ""), "round");
    renderAll();
  },
  round_evaluated(entry) {
    applyHistoryEntry(entry);
    const loss = typeof entry.federated_loss === "number" ? entry.federated_loss.toFixed(4) : "–";
    logActivity(`round ${entry.round} evaluated by ${(entry.evaluated || []).length} client(s): federated loss ${loss}`, "round");
    renderHistory();
  },
  status(data) {
    const wasOn = Boolean(model.status.autorun);
    model.status = { ...model.status, ...data };
    if (!data.round_open) model.selected = null;
    const finished = trackAutorun(model.status);
    if (wasOn !== Boolean(data.autorun) && !finished) logActivity(data.autorun ? `autorun on: up to round ${data.autorun_target}` : "autorun off", "control");
    renderStatus();
    renderClients();
  },
};

// ------------------------------------------------------------------ network
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

let statusTimer = null;
function scheduleStatusRefresh() {
  if (statusTimer) return;
  statusTimer = setTimeout(async () => {
    statusTimer = null;
    try {
      const s = await getJSON("status");
      model.status = { ...model.status, ...s };
      trackAutorun(model.status);
      if (!s.round_open) model.selected = null;
      else if (Array.isArray(s.selected_clients)) model.selected = new Set(s.selected_clients);
      renderStatus();
      renderClients();
    } catch { /* the next event or poll fixes it */ }
  }, 250);
}

async function pollOnce({ unlessSnapshot = false } = {}) {
  const [s, cl, h] = await Promise.all([getJSON("status"), getJSON("clients"), getJSON("history")]);
  if (unlessSnapshot && model.gotSnapshot) return;
  const first = !model.polled && !model.gotSnapshot;
  model.polled = true;
  if (s.round > (model.status.round ?? 0) && !first) logActivity(`round ${s.round} finished: accuracy ${pct(s.accuracy)}`, "round");
  model.status = s;
  trackAutorun(s);
  if (!s.round_open) model.selected = null;
  else if (Array.isArray(s.selected_clients)) model.selected = new Set(s.selected_clients);
  setClients(cl, { logChanges: !first });
  model.history = h.slice().sort((a, b) => a.round - b.round);
  renderAll();
}

function setConn(state, label) {
  const c = $("connection");
  c.dataset.conn = state;
  text(c.querySelector(".conn-text"), label);
}

let source = null;
let pollTimer = null;

function startPolling() {
  if (pollTimer) return;
  const tick = async () => {
    if (model.live) { pollTimer = null; return; }
    try {
      await pollOnce();
      setConn("polling", "polling (event stream down)");
    } catch {
      setConn("offline", "server unreachable — retrying");
    }
    pollTimer = setTimeout(tick, POLL_MS);
  };
  pollTimer = setTimeout(tick, 0);
}

function connectStream() {
  if (typeof EventSource === "undefined") { startPolling(); return; }
  source = new EventSource("events");
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      fn(data);
    });
  }
  source.onopen = () => { model.live = true; setConn("live", "live"); };
  source.onerror = () => {
    model.live = false;
    setConn("reconnecting", "event stream down — polling");
    startPolling();
    if (source.readyState === EventSource.CLOSED) {  // the browser gave up: reopen it ourselves
      source.close();
      setTimeout(connectStream, 3000);
    }
  };
}

// While live, refresh client rows now and then so "last seen" stays true (heartbeats are not events).
setInterval(async () => {
  if (!model.live) return;
  try {
    setClients(await getJSON("clients"), { keepStates: true });
    renderClients();
  } catch { /* ignore */ }
}, CLIENTS_REFRESH_MS);
setInterval(renderLastSeen, 1000);
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { drawAccuracyWithLegend(); drawBytes($("bytes-chart"), model.history); }, 150);
});

// ------------------------------------------------------------------ controls (admin token)
function getToken() { try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; } }
function setToken(t) {
  try { t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
  renderToken();
}
function renderToken() {
  const t = getToken();
  text($("token-state"), t ? "admin token: set for this tab" : "admin token: not set");
  $("btn-forget").hidden = !t;
  text($("btn-token"), t ? "change…" : "set…");
}

function askToken() {
  const dlg = $("token-dialog");
  const input = $("token-input");
  input.value = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      const v = input.value.trim();
      resolve(dlg.returnValue === "ok" && v ? v : null);
    }, { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    input.focus();
  });
}

function say(msg, kind) {
  const m = $("ctl-message");
  m.className = `message ${kind}`;
  m.dataset.kind = kind;
  m.textContent = msg;
}

async function control(method, path, what) {
  let token = getToken();
  if (!token) {
    token = await askToken();
    if (!token) { say(`${what}: cancelled (no admin token)`, "warn"); return null; }
    setToken(token);
  }
  let r;
  try {
    r = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` } });
  } catch (e) {
    say(`${what}: server unreachable (${e.message})`, "error");
    return null;
  }
  let body = {};
  try { body = await r.json(); } catch { /* empty */ }
  if (r.status === 401 || r.status === 403) {
    setToken(null);  // ask again next time
    say(`${what}: refused — ${body.detail || "admin token required"} (HTTP ${r.status})`, "error");
    logActivity(`${what} refused (HTTP ${r.status})`, "error");
    return null;
  }
  if (!r.ok) {
    say(`${what}: ${body.detail || `HTTP ${r.status}`}`, "error");
    return null;
  }
  say(`${what}: done`, "ok");
  logActivity(what, "control");
  if (body.status) { model.status = { ...model.status, ...body.status }; trackAutorun(model.status); renderStatus(); }
  return body;
}

async function disconnectClient(id, name) {
  if (!id) return;
  await control("DELETE", `client/${encodeURIComponent(id)}`, `disconnect ${name}`);
}

function wireControls() {
  $("autorun-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const n = Number.parseInt($("autorun-rounds").value, 10);
    if (!(n >= 1)) { say("rounds must be a whole number ≥ 1", "warn"); return; }
    control("POST", `client/autorun/${n}`, `start autorun for ${n} round(s)`);
  });
  $("btn-stop").addEventListener("click", () => control("DELETE", "client/autorun", "stop autorun"));
  $("btn-step").addEventListener("click", () => control("POST", "round/step", "run one round"));
  $("btn-token").addEventListener("click", async () => { const t = await askToken(); if (t) setToken(t); });
  $("btn-forget").addEventListener("click", () => setToken(null));
  renderToken();
}

wireControls();
renderAll();
connectStream();
// First paint does not wait for the stream: one poll fills the page at once.
pollOnce({ unlessSnapshot: true }).catch(() => setConn("offline", "server unreachable — retrying"));
