// corral dashboard: a client of the control API, like the CLI. It reads one SSE stream
// (GET /v1/stats?follow=1: a fleet snapshot every tick and right after each event) and the log
// stream; its buttons call what `corral restart / stop / start / scale` call. No build step:
// these modules are served as they are, from the package.
import { headers, parseFrame, records, token } from "./api.js";
import { $, el } from "./dom.js";
import { addEvent, render, wireActions } from "./fleet.js";
import { followLogs, wireLogs } from "./logs.js";

const conn = $("#conn");
let lastFrame = 0;

function setConn(state, text) {
  conn.setAttribute("data-state", state);
  conn.textContent = text;
}

function showBanner(node) {
  const b = $("#banner");
  if (node) { b.replaceChildren(node); b.hidden = false; } else { b.hidden = true; }
}

function authBanner(rejected) {
  return el("div", {},
    el("strong", { text: rejected ? "The token was refused. " : "This dashboard needs its token. " }),
    "On the machine running corral, run ", el("code", { text: "corral dashboard --url" }),
    " and open the URL it prints.");
}

async function follow() {
  let delay = 500;
  let firstEvents = true;
  for (;;) {
    try {
      const res = await fetch("v1/stats?follow=1&interval=1&events=" + (firstEvents ? 60 : 0), { headers: headers() });
      if (res.status === 401) {
        setConn("auth", token ? "token refused" : "token needed");
        showBanner(authBanner(Boolean(token)));
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      firstEvents = false;
      showBanner(null);
      for await (const chunk of records(res, "\n\n")) {
        const [kind, data] = parseFrame(chunk);
        if (kind === "stats") { render(data); lastFrame = Date.now(); setConn("live", "live"); delay = 500; }
        else if (kind === "event") addEvent(data);
      }
      setConn("down", "daemon stopped · reconnecting");
    } catch (e) {
      setConn("down", "disconnected · reconnecting");
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

setInterval(() => {
  if (conn.getAttribute("data-state") === "live" && Date.now() - lastFrame > 4000) setConn("stale", "no update for " + Math.round((Date.now() - lastFrame) / 1000) + "s");
}, 1000);

wireActions();
wireLogs();
follow();
followLogs();
