// The services and their instances, sparklines, the events list, and the buttons (the same
// calls `corral restart / start / stop / scale` make).
import { call } from "./api.js";
import { $, badge, bytes, clock, duration, el, ms, rate, svg, toast } from "./dom.js";
import { addLogOption } from "./logs.js";

// --- sparklines --------------------------------------------------------------------------------
const SPARK_W = 200, SPARK_H = 34, SPARK_POINTS = 60;

function sparkline(values) {
  const pts = values.slice(-SPARK_POINTS);
  const box = svg("svg", { viewBox: `0 0 ${SPARK_W} ${SPARK_H}`, preserveAspectRatio: "none", role: "img" });
  box.append(svg("line", { class: "base", x1: 0, y1: SPARK_H - 0.5, x2: SPARK_W, y2: SPARK_H - 0.5 }));
  const known = pts.filter((v) => v !== null && v !== undefined);
  if (known.length < 2) return box;
  const peak = Math.max(...known) || 1;
  const step = SPARK_W / (SPARK_POINTS - 1);
  const x0 = SPARK_W - (pts.length - 1) * step;
  const y = (v) => SPARK_H - 2 - (v / peak) * (SPARK_H - 6);
  let line = "", area = "", open = false, last = [0, 0];
  pts.forEach((v, i) => {
    const x = x0 + i * step;
    if (v === null || v === undefined) {
      if (open) area += `L${last[0]},${SPARK_H}Z`;
      open = false;
      return;
    }
    const p = [x.toFixed(1), y(v).toFixed(1)];
    line += (open ? "L" : "M") + p.join(",");
    if (!open) area += `M${p[0]},${SPARK_H}L${p.join(",")}`;
    else area += "L" + p.join(",");
    open = true;
    last = p;
  });
  if (open) area += `L${last[0]},${SPARK_H}Z`;
  box.append(svg("path", { class: "area", d: area }), svg("path", { class: "line", d: line }));
  box.append(svg("circle", { class: "dot", cx: last[0], cy: last[1], r: 2.6 }));
  return box;
}

function sparkCell(kind, label, values, now, unit) {
  const node = el("div", { class: "spark " + kind + (values.length < 2 ? " empty" : "") });
  const known = values.filter((v) => v !== null && v !== undefined);
  const peak = known.length ? Math.max(...known) : null;
  node.append(
    el("span", { class: "label", text: label + (peak && known.length > 1 ? ` · peak ${unit(peak)}` : "") }),
    el("span", { class: "now", text: unit(now) }),
    sparkline(values),
  );
  node.title = `${label}, last ${Math.min(values.length, SPARK_POINTS)} s`;
  return node;
}

// --- rendering ---------------------------------------------------------------------------------
const services = new Map();   // name → {node, rows: Map, desired}
const pendingScale = new Map(); // name → {count, timer}
const lastScale = new Map();    // name → last "scale" event

function renderFacts(s) {
  $("#project").textContent = s.project || "";
  document.title = `corral · ${s.project || ""}`;
  const d = s.daemon || {};
  const facts = [["daemon", `pid ${d.pid}`], ["up", duration(d.uptime_s || 0)]];
  if (d.proxy && d.proxy.length) facts.push(["proxy", d.proxy.join(", ")]);
  $("#facts").replaceChildren(...facts.map(([k, v]) =>
    el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
}

function renderTiles(s) {
  const t = s.totals;
  const tile = (k, v, small) => el("div", { class: "tile" }, el("div", { class: "k", text: k }),
    el("div", { class: "v", text: v }, small ? el("small", { text: small }) : ""));
  $("#tiles").replaceChildren(
    tile("Instances up", String(t.up), `/ ${t.instances}` + (t.completed ? ` · ${t.completed} done` : "")),
    tile("Requests", rate(t.rps), "/s"),
    tile("In flight", String(t.in_flight)),
    tile("CPU", t.cpu_percent.toFixed(1), "%"),
    tile("Memory", bytes(t.rss_bytes)),
  );
}

function actionButton(label, act, svcName, cls) {
  return el("button", { type: "button", class: "btn " + (cls || ""), text: label, "data-act": act, "data-service": svcName });
}

function serviceShell(name) {
  const title = el("div", { class: "svc-title" }, el("h2", { text: name }), el("div", { class: "svc-meta" }));
  const scale = el("div", { class: "scale", title: "instances" },
    el("button", { type: "button", text: "−", "data-act": "scale-down", "data-service": name, "aria-label": `scale ${name} down` }),
    el("output", { text: "" }),
    el("button", { type: "button", text: "+", "data-act": "scale-up", "data-service": name, "aria-label": `scale ${name} up` }));
  const actions = el("div", { class: "actions" }, scale,
    actionButton("Restart", "restart", name, "primary"),
    actionButton("Start", "start", name),
    actionButton("Stop", "stop", name, "danger"));
  const head = el("header", {}, title, el("div", { class: "spark-slot rps" }), el("div", { class: "spark-slot p99" }), actions);
  const cols = [["Instance"], ["State"], ["PID", "num"], ["Port", "num"], ["Uptime", "num"], ["Restarts", "num"],
    ["Next retry", "num retry"], ["CPU", "num"], ["Memory", "num"], ["Req/s", "num"], ["p99", "num"],
    ["In flight", "num hide-narrow"], ["Detail", "hide-narrow"], [""]];
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...cols.map(([t, c]) => el("th", { class: c || "", text: t, scope: "col" })))),
    el("tbody"));
  const node = el("article", { class: "service", "data-service": name }, head, el("div", { class: "table-wrap" }, table));
  return { node, rows: new Map(), desired: 0 };
}

function nextRetry(row) {
  if (typeof row.next_retry_at === "number") return "in " + duration(Math.max(0, row.next_retry_at - Date.now() / 1000));
  if (typeof row.next_retry_s === "number") return "in " + duration(Math.max(0, row.next_retry_s));
  return "–";
}

function instanceCells(r) {
  const live = r.pid !== null && r.pid !== undefined;
  const dash = "–";
  return [
    [r.name, "name"],
    [badge(r.state), ""],
    [live ? String(r.pid) : dash, "num mono" + (live ? "" : " dim")],
    [r.port !== null && r.port !== undefined ? String(r.port) : dash, "num mono"],
    [live ? duration(r.uptime_s || 0) : dash, "num"],
    [String(r.restarts), "num" + (r.restarts ? "" : " dim")],
    [nextRetry(r), "num retry dim"],
    [live ? (r.cpu_percent || 0).toFixed(1) + "%" : dash, "num"],
    [live ? bytes(r.rss_bytes || 0) : dash, "num"],
    [rate(r.rps), "num"],
    [ms(r.p99_ms), "num"],
    [r.in_flight === null || r.in_flight === undefined ? dash : String(r.in_flight), "num hide-narrow"],
    [r.detail || "", "detail hide-narrow"],
  ];
}

function renderRow(view, r) {
  const key = `${r.name}#${r.generation}${r.retiring ? "-old" : ""}`;
  let tr = view.rows.get(key);
  if (!tr) {
    tr = el("tr");
    const restart = el("button", { type: "button", class: "row-act", text: "↻", title: `restart ${r.name}`,
      "data-act": "restart", "data-service": r.name, "aria-label": `restart ${r.name}` });
    const cells = instanceCells(r).map(() => el("td"));
    tr.append(...cells, el("td", {}, restart));
    view.rows.set(key, tr);
  }
  tr.className = r.retiring ? "retiring" : r.incoming ? "incoming" : "";
  tr.setAttribute("data-instance", r.name);
  tr.setAttribute("data-state", r.state);
  tr.setAttribute("data-pid", r.pid === null || r.pid === undefined ? "" : String(r.pid));
  instanceCells(r).forEach(([value, cls], i) => {
    const td = tr.children[i];
    td.className = cls;
    if (typeof value === "string") { if (td.textContent !== value) td.textContent = value; }
    else td.replaceChildren(value);
  });
  return [key, tr];
}

function renderService(svc) {
  let view = services.get(svc.name);
  if (!view) {
    view = serviceShell(svc.name);
    services.set(svc.name, view);
    addLogOption(svc.name);
  }
  view.desired = svc.desired;
  const meta = view.node.querySelector(".svc-meta");
  const parts = [el("span", { class: "phase " + svc.phase, text: svc.phase }),
    el("span", { text: svc.total === 0 && svc.completed ? "completed" : `${svc.up}/${svc.total} up` })];
  if (typeof svc.cold_starts === "number") parts.push(el("span", { text: `cold starts ${svc.cold_starts}` }));
  const scaled = lastScale.get(svc.name);
  if (scaled) parts.push(el("span", { class: "dim", text: `scaled to ${scaled.new} ${duration(Date.now() / 1000 - scaled.ts)} ago` }));
  if (svc.error) parts.push(el("span", { class: "err", text: svc.error }));
  meta.replaceChildren(...parts);
  const pending = pendingScale.get(svc.name);
  view.node.querySelector(".scale output").textContent = String(pending ? pending.count : svc.desired);

  const rps = view.node.querySelector(".spark-slot.rps");
  const p99 = view.node.querySelector(".spark-slot.p99");
  if (svc.routed) {
    rps.replaceChildren(sparkCell("rps", "requests / s", svc.history.rps, svc.rps, rate));
    p99.replaceChildren(sparkCell("p99", "p99 latency", svc.history.p99_ms, svc.p99_ms, ms));
  } else {
    rps.replaceChildren(el("div", { class: "dim", text: "not behind the proxy" }));
    p99.replaceChildren();
  }
  const seen = new Set();
  const tbody = view.node.querySelector("tbody");
  const ordered = svc.instances.map((r) => { const [key, tr] = renderRow(view, r); seen.add(key); return tr; });
  for (const key of [...view.rows.keys()]) if (!seen.has(key)) view.rows.delete(key);
  if (ordered.length !== tbody.children.length || ordered.some((tr, i) => tbody.children[i] !== tr)) {
    tbody.replaceChildren(...ordered);
  }
  return view.node;
}

export function render(s) {
  // The column appears when the daemon reports a retry time for some instance, not before.
  const retries = s.services.some((svc) => svc.instances.some((r) => "next_retry_at" in r || "next_retry_s" in r));
  document.body.classList.toggle("has-retry", retries);
  renderFacts(s);
  renderTiles(s);
  const nodes = s.services.map(renderService);
  const names = new Set(s.services.map((x) => x.name));
  for (const name of [...services.keys()]) if (!names.has(name)) services.delete(name);
  const box = $("#services");
  if (nodes.length !== box.children.length || nodes.some((n, i) => box.children[i] !== n)) box.replaceChildren(...nodes);
}

// --- events ------------------------------------------------------------------------------------
const MAX_EVENTS = 200;

export function addEvent(e) {
  if (e.kind === "scale") lastScale.set(e.service, e);
  const what = e.instance || e.service || "daemon";
  const change = e.kind === "scale" ? [`scaled to ${e.new}`]
    : e.old ? [e.old, el("span", { class: "arrow", text: " → " }), e.new] : [e.new];
  const notes = [];
  if (e.pid) notes.push(`pid ${e.pid}`);
  if (e.detail) notes.push(e.detail);
  const li = el("li", { "data-kind": e.kind },
    el("time", { text: clock(e.ts) }),
    el("div", {}, el("span", { class: "what", text: what }), " ",
      el("span", { class: "change" }, ...change), notes.length ? el("div", { class: "dim", text: notes.join(" · ") }) : ""));
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// --- buttons: the same calls the CLI makes -----------------------------------------------------
async function act(button, path, body, label) {
  button.disabled = true;
  try {
    await call("POST", path, body);
    toast(label + " done");
  } catch (e) {
    toast(`${label} failed: ${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function scaleBy(name, delta) {
  const view = services.get(name);
  if (!view) return;
  const p = pendingScale.get(name) || { count: view.desired, timer: 0 };
  p.count = Math.max(0, p.count + delta);
  clearTimeout(p.timer);
  pendingScale.set(name, p);
  view.node.querySelector(".scale output").textContent = String(p.count);
  // Clicks in a row become one order, as `corral scale web=5` would be.
  p.timer = setTimeout(async () => {
    pendingScale.delete(name);
    try {
      await call("POST", "v1/scale", { counts: { [name]: p.count } });
      toast(`${name} scaled to ${p.count}`);
    } catch (e) {
      toast(`scale ${name} failed: ${e.message}`, true);
    }
  }, 350);
}

export function wireActions() {
  document.addEventListener("click", onClick);
}

function onClick(ev) {
  const button = ev.target.closest("button[data-act]");
  if (!button) return;
  const target = button.getAttribute("data-service");
  switch (button.getAttribute("data-act")) {
    case "restart": act(button, "v1/restart", { targets: [target] }, `restart ${target}`); break;
    case "start": act(button, "v1/start", { targets: [target] }, `start ${target}`); break;
    case "stop":
      // Two clicks: a stop takes a service out of service, a mis-click must not.
      if (!button.classList.contains("armed")) {
        button.classList.add("armed");
        button.textContent = "Confirm stop";
        setTimeout(() => { button.classList.remove("armed"); button.textContent = "Stop"; }, 3000);
        return;
      }
      button.classList.remove("armed");
      button.textContent = "Stop";
      act(button, "v1/stop", { targets: [target] }, `stop ${target}`);
      break;
    case "scale-up": scaleBy(target, 1); break;
    case "scale-down": scaleBy(target, -1); break;
  }
}
