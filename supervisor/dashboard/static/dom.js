// DOM building, number formats, state badges and toasts: no state of their own.
export const $ = (sel) => document.querySelector(sel);

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.includes("-")) node.setAttribute(k, v);  // data-*, aria-*
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

export function duration(s) {
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

export function rate(v) {
  if (v === null || v === undefined) return "–";
  return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString();
}

export function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
}

export function clock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

// The symbol and the word carry the state; colour only repeats it.
const STATES = {
  ready: ["●", "ok"], running: ["●", "ok"], completed: ["✓", "info"],
  starting: ["◐", "warn"], unhealthy: ["▲", "warn"], backoff: ["↻", "warn"], stopping: ["◌", "warn"],
  crashed: ["✖", "bad"], failed: ["✖", "bad"], stopped: ["○", "idle"],
};

export function badge(state) {
  const [sym, tone] = STATES[state] || ["•", "idle"];
  return el("span", { class: "state " + tone, "data-state": state },
    el("span", { class: "sym", text: sym, "aria-hidden": "true" }), state);
}

export function toast(message, bad) {
  const t = el("div", { class: "toast" + (bad ? " bad" : ""), text: message });
  $("#toasts").append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 3500);
}
