// The log tail: one NDJSON stream of GET /v1/logs?follow=1, for one service or all.
import { headers, records } from "./api.js";
import { $, el, toast } from "./dom.js";

const MAX_LOG_LINES = 2000;
const logBox = $("#log");
const logColours = new Map();
let logAbort = null, logPaused = false, held = [];

export function addLogOption(name) {
  $("#log-target").append(el("option", { value: name, text: name }));
}

function logLine(rec) {
  const c = logColours.get(rec.service) ?? logColours.set(rec.service, logColours.size % 6).get(rec.service);
  const src = rec.index ? `${rec.service}.${rec.index}` : rec.service;
  const line = el("div", { class: rec.stream === "corral" ? "corral" : "" },
    el("span", { class: "src c" + c, text: src.padEnd(9) }), rec.stream === "corral" ? "[corral] " + rec.line : rec.line);
  return line;
}

function appendLogs(recs) {
  const stick = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
  logBox.append(...recs.map(logLine));
  while (logBox.childElementCount > MAX_LOG_LINES) logBox.firstChild.remove();
  if (stick) logBox.scrollTop = logBox.scrollHeight;
}

export async function followLogs() {
  if (logAbort) logAbort.abort();
  const abort = new AbortController();
  logAbort = abort;
  logBox.replaceChildren();
  held = [];
  const target = $("#log-target").value;
  const q = new URLSearchParams({ n: "200", follow: "1" });
  if (target) q.append("target", target);
  let delay = 500;
  while (!abort.signal.aborted) {
    try {
      const res = await fetch("v1/logs?" + q, { headers: headers(), signal: abort.signal });
      if (res.status === 401) return;
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      for await (const line of records(res, "\n")) {
        if (!line.trim()) continue;
        const rec = JSON.parse(line);
        if (logPaused) held.push(rec); else appendLogs([rec]);
      }
      q.set("n", "0");  // after a reconnect, only what is new
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

function logText() {
  return [...logBox.children].map((d) => d.textContent).join("\n") + "\n";
}

export function wireLogs() {
  $("#log-target").addEventListener("change", followLogs);
  $("#log-pause").addEventListener("click", (ev) => {
    logPaused = !logPaused;
    ev.target.setAttribute("aria-pressed", String(logPaused));
    ev.target.textContent = logPaused ? `Resume` : "Pause";
    if (!logPaused) { appendLogs(held); held = []; }
  });
  $("#log-clear").addEventListener("click", () => logBox.replaceChildren());
  $("#log-save").addEventListener("click", () => {
    const name = `corral-${$("#log-target").value || "all"}-${new Date().toISOString().replace(/[:.]/g, "-")}.log`;
    const url = URL.createObjectURL(new Blob([logText()], { type: "text/plain" }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
  $("#log-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(logText());
      toast("logs copied");
    } catch (e) {
      // No clipboard API off a secure origin: select the text so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents(logBox);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      toast("logs selected: press Ctrl+C to copy");
    }
  });
}
