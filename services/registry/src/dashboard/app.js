// Switchyard dashboard: a snapshot from /dashboard/state, then live
// updates from /dashboard/events (Server-Sent Events). No framework, no
// build step; every element a test relies on has a stable id or data-*.
"use strict";

const LEVELS = ["trace", "debug", "info", "warn", "error"];
const MAX_LOG_ROWS = 1000;
const MAX_PAYMENTS = 20;
const TICKS_KEPT = 60;
const csrf = document.querySelector('meta[name="csrf-token"]').content;

const view = {
  maintenance: null,
  auth: true,
  prices: new Map(), // symbol -> [{price, change, ts, seq}]
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function fmtRate(x) {
  if (!x) return "0";
  return x >= 10 ? x.toFixed(0) : x.toFixed(1);
}

function shortTime(ts) {
  // "2026-12-05T10:00:01.123456Z" -> "10:00:01"
  const m = /T(\d\d:\d\d:\d\d)/.exec(ts || "");
  return m ? m[1] : ts || "";
}

// --- services -------------------------------------------------------------

function renderServices(services) {
  const body = document.querySelector("#services tbody");
  const rows = [];
  for (const s of services) {
    const healthy = s.instances.filter((i) => i.healthy).length;
    const instances = el("td", { class: "instances" }, `${healthy}/${s.instances.length}`);
    for (const i of s.instances) {
      instances.append(
        el("span", {
          class: "instance",
          "data-instance": i.id,
          "data-health": i.healthy ? "healthy" : "unhealthy",
          title: `${i.id} v${i.version} · last heartbeat ${(i.last_seen_ms_ago / 1000).toFixed(1)} s ago · ${i.requests} requests`,
        }),
      );
    }
    rows.push(
      el(
        "tr",
        { "data-service": s.name, "data-health": s.health },
        el("td", { class: "name" }, s.name),
        el("td", {}, el("span", { class: `badge ${s.health}` }, s.health)),
        instances,
        el("td", { class: "num rate" }, fmtRate(s.rate)),
        el("td", { class: "num" }, String(s.requests)),
        el("td", { class: "num" }, String(s.errors)),
      ),
    );
  }
  body.replaceChildren(...rows);
}

// --- payments -------------------------------------------------------------

function renderPayments(p, jetstream) {
  for (const key of ["pending", "processing", "completed", "failed", "dlq"]) {
    const node = document.getElementById(`payments-${key}`);
    node.textContent = String(p[key]);
    node.dataset.value = String(p[key]);
  }
  document.getElementById("payments-rate").textContent = fmtRate(p.rate);
  document.getElementById("payments-panel").dataset.jetstream = jetstream ? "ok" : "unavailable";
}

function addPayment(p) {
  const list = document.getElementById("payment-list");
  list.querySelector(".empty")?.remove();
  list.querySelector(`li[data-payment-id="${CSS.escape(p.payment_id)}"]`)?.remove();
  const item = el(
    "li",
    { "data-payment-id": p.payment_id, "data-status": p.status, "data-trace-id": p.trace_id || "" },
    el("span", { class: `badge ${p.status}` }, p.status),
    el("span", { class: "pid" }, p.payment_id),
    el("span", { class: "amount" }, `${p.amount} ${p.currency}`),
    el("span", { class: "reason" }, p.reason || ""),
    el("span", { class: "time" }, shortTime(p.at)),
  );
  item.title = p.trace_id ? `trace ${p.trace_id}` : "";
  list.prepend(item);
  while (list.children.length > MAX_PAYMENTS) list.lastElementChild.remove();
}

// --- stocks ---------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function chart(points) {
  const w = 160, h = 40;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("preserveAspectRatio", "none");
  const values = points.map((p) => Number(p.price)).filter((v) => Number.isFinite(v));
  if (values.length > 1) {
    const lo = Math.min(...values), hi = Math.max(...values);
    const span = hi - lo || 1;
    const step = w / (TICKS_KEPT - 1);
    const offset = w - (values.length - 1) * step;
    const xy = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(h - 3 - ((v - lo) / span) * (h - 6)).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", xy.join(" "));
    line.setAttribute("class", values[values.length - 1] >= values[0] ? "up" : "down");
    svg.append(line);
  }
  return svg;
}

function renderStock(symbol) {
  const points = view.prices.get(symbol) || [];
  const last = points[points.length - 1];
  if (!last) return;
  const box = document.getElementById("stocks");
  box.querySelector(".empty")?.remove();
  let card = box.querySelector(`[data-symbol="${CSS.escape(symbol)}"]`);
  if (!card) {
    card = el("div", { class: "stock", "data-symbol": symbol });
    const cards = [...box.querySelectorAll(".stock")];
    const after = cards.find((c) => c.dataset.symbol > symbol);
    box.insertBefore(card, after || null);
  }
  const down = String(last.change).startsWith("-");
  card.dataset.price = last.price;
  card.dataset.seq = String(last.seq);
  card.replaceChildren(
    el("span", { class: "symbol" }, symbol),
    el("span", { class: "price" }, last.price),
    el("span", { class: `change ${down ? "down" : "up"}` }, `${down ? "" : "+"}${last.change}`),
    chart(points),
  );
}

function addTick(t) {
  const points = view.prices.get(t.symbol) || [];
  if (points.length && points[points.length - 1].seq >= t.seq) return;
  points.push(t);
  while (points.length > TICKS_KEPT) points.shift();
  view.prices.set(t.symbol, points);
  renderStock(t.symbol);
}

// --- logs -----------------------------------------------------------------

function logFilter() {
  return {
    level: document.getElementById("log-level").value,
    trace: document.getElementById("log-trace").value.trim().toLowerCase(),
    service: document.getElementById("log-service").value.trim(),
  };
}

function shown(row, f) {
  if (f.level && LEVELS.indexOf(row.dataset.level) < LEVELS.indexOf(f.level)) return false;
  if (f.trace && !row.dataset.traceId.startsWith(f.trace)) return false;
  if (f.service && !row.dataset.service.includes(f.service)) return false;
  return true;
}

function countLogs() {
  const tail = document.getElementById("log-tail");
  const visible = tail.querySelectorAll("tr:not([hidden])").length;
  document.getElementById("log-count").textContent = `${visible} of ${tail.children.length} lines`;
}

function applyLogFilter() {
  const f = logFilter();
  for (const row of document.getElementById("log-tail").children) row.hidden = !shown(row, f);
  countLogs();
}

function addLog(l, filter) {
  const tail = document.getElementById("log-tail");
  const level = LEVELS.includes(l.level) ? l.level : "info";
  const row = el(
    "tr",
    { "data-trace-id": l.trace_id || "", "data-level": level, "data-service": l.service, class: `level-${level}` },
    el("td", { class: "time" }, shortTime(l.ts)),
    el("td", { class: "service" }, l.service),
    el("td", { class: "level" }, level),
    el("td", { class: "message" }, l.message),
    el("td", { class: "trace" }, l.trace_id || ""),
  );
  const extra = Object.entries(l.fields || {}).filter(([k]) => k !== "trace_id");
  if (extra.length) row.title = extra.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join("  ");
  row.hidden = !shown(row, filter || logFilter());
  tail.prepend(row);
  while (tail.children.length > MAX_LOG_ROWS) tail.lastElementChild.remove();
}

// --- maintenance ----------------------------------------------------------

function renderMaintenance(on, auth) {
  view.maintenance = on;
  view.auth = auth;
  const flag = document.getElementById("maintenance");
  flag.dataset.state = on ? "on" : "off";
  flag.textContent = on ? "ON" : "off";
  document.getElementById("maintenance-toggle").textContent = on ? "Turn off" : "Turn on";
  document.getElementById("maintenance-auth").textContent = auth
    ? "Changing it logs in to NATS as user admin with this password (the registry's own user may not)."
    : "This NATS has no accounts: the registry sets the flag itself; no password is checked.";
}

async function toggleMaintenance(event) {
  event.preventDefault();
  const message = document.getElementById("maintenance-message");
  const password = document.getElementById("admin-password");
  const on = !view.maintenance;
  if (view.auth && !password.value) {
    message.dataset.outcome = "error";
    message.textContent = "Enter the admin password to change maintenance mode.";
    password.focus();
    return;
  }
  const button = document.getElementById("maintenance-toggle");
  button.disabled = true;
  message.dataset.outcome = "pending";
  message.textContent = on ? "turning maintenance on…" : "turning maintenance off…";
  try {
    const response = await fetch("/dashboard/maintenance", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(password.value ? { on, password: password.value } : { on }),
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      password.value = "";
      renderMaintenance(body.maintenance, view.auth);
      message.dataset.outcome = "ok";
      message.textContent = `Maintenance is ${body.maintenance ? "on" : "off"} (set as ${body.as}).${body.note ? " " + body.note : ""}`;
    } else {
      message.dataset.outcome = "error";
      message.textContent = `${response.status}: ${(body.error && body.error.message) || response.statusText}`;
    }
  } catch (err) {
    message.dataset.outcome = "error";
    message.textContent = `the request failed: ${err}`;
  } finally {
    button.disabled = false;
  }
}

// --- wiring ---------------------------------------------------------------

function applyState(s) {
  renderServices(s.services);
  renderPayments(s.payments, s.jetstream);
  renderMaintenance(s.maintenance, s.auth);
  document.getElementById("updated").textContent = `updated ${shortTime(s.at)}`;
  document.body.dataset.ready = "true";
}

function connection(state, text) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function listen() {
  const events = new EventSource("/dashboard/events");
  events.onopen = () => connection("live", "live");
  events.onerror = () => connection("reconnecting", "reconnecting…");
  const on = (name, f) => events.addEventListener(name, (e) => {
    try { f(JSON.parse(e.data)); } catch (err) { console.error(name, err); }
  });
  on("state", applyState);
  on("tick", addTick);
  on("log", (l) => { addLog(l); countLogs(); });
  on("payment", addPayment);
}

async function start() {
  for (const id of ["log-level", "log-trace", "log-service"]) {
    document.getElementById(id).addEventListener("input", applyLogFilter);
  }
  document.getElementById("maintenance-form").addEventListener("submit", toggleMaintenance);
  try {
    const response = await fetch("/dashboard/state", { cache: "no-store" });
    const s = await response.json();
    applyState(s);
    for (const [symbol, ticks] of Object.entries(s.prices || {})) {
      view.prices.set(symbol, ticks.slice(-TICKS_KEPT));
      renderStock(symbol);
    }
    const filter = logFilter();
    for (const l of s.logs || []) addLog(l, filter);
    countLogs();
    for (const p of s.recent_payments || []) addPayment(p);
  } catch (err) {
    connection("error", `cannot load the state: ${err}`);
  }
  listen();
}

start();
