"""What `corral top` shows, as plain data: snapshot → columns and rows of styled cells.

Pure functions of a `/v1/stats` snapshot and the terminal width, so they are tested without a
terminal. Every state has a symbol and a word: colour repeats it, it never carries it alone
(NO_COLOR, monochrome terminals, colour-blind users).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from ..output import human_bytes, human_duration

STATES: dict[str, tuple[str, str]] = {
    "ready": ("●", "green"),
    "running": ("●", "green"),
    "completed": ("✓", "cyan"),
    "starting": ("◐", "yellow"),
    "unhealthy": ("▲", "yellow"),
    "backoff": ("↻", "yellow"),
    "stopping": ("◌", "yellow"),
    "crashed": ("✖", "red"),
    "failed": ("✖", "red"),
    "stopped": ("○", "bright_black"),
}
_BARS = "▁▂▃▄▅▆▇█"
DASH = "-"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    right: bool = False
    min_width: int = 0  # the terminal width from which this column is shown


# In order of display; narrow terminals drop the columns whose min_width they do not reach.
COLUMNS = (
    Column("name", "NAME"),
    Column("state", "STATE"),
    Column("pid", "PID", right=True, min_width=60),
    Column("port", "PORT", right=True, min_width=72),
    Column("uptime", "UPTIME", right=True, min_width=84),
    Column("restarts", "RESTARTS", right=True, min_width=84),
    Column("retry", "NEXT RETRY", right=True, min_width=100),  # only when the daemon says
    Column("cpu", "CPU%", right=True),
    Column("mem", "MEM", right=True),
    Column("rps", "REQ/S", right=True, min_width=48),
    Column("p99", "P99", right=True, min_width=56),
    Column("inflight", "IN-FL", right=True, min_width=96),
    Column("trend", "REQ/S, LAST MINUTE", min_width=118),
    Column("detail", "DETAIL", min_width=132),
)
TREND_WIDTH = 16


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # stable across ticks: "svc:web", "inst:web.1#3"
    target: str  # what restart/stop/start act on: "web" or "web.1"
    service: str
    cells: dict[str, Text]


def columns_for(width: int, retry: bool = False) -> list[Column]:
    """The columns that fit a terminal `width` cells wide (NEXT RETRY only with `retry`)."""
    return [c for c in COLUMNS if width >= c.min_width and (retry or c.key != "retry")]


def has_retry(snapshot: Mapping[str, Any]) -> bool:
    """Whether any instance carries a retry time (daemons that track one add the field)."""
    return any(
        "next_retry_at" in inst
        for svc in snapshot.get("services", [])
        for inst in svc.get("instances", [])
    )


def sparkline(values: Sequence[float | None], width: int) -> str:
    """The last `width` values as block characters, scaled to their own peak."""
    points = list(values)[-width:]
    known = [v for v in points if v is not None]
    if not known:
        return ""
    peak = max(known) or 1.0
    out = []
    for v in points:
        if v is None:
            out.append(" ")
        else:
            out.append(_BARS[min(len(_BARS) - 1, int(v / peak * (len(_BARS) - 1) + 0.5))])
    return "".join(out)


def rate(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def millis(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 1000:
        return f"{value / 1000:.1f}s"
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def state_text(state: str) -> Text:
    symbol, colour = STATES.get(state, ("•", ""))
    return Text(f"{symbol} {state}", style=colour)


def next_retry(row: Mapping[str, Any], now: float) -> str:
    """When a failed instance is tried again, if the daemon says (`next_retry_at`, epoch s)."""
    at = row.get("next_retry_at")
    if isinstance(at, int | float):
        return "in " + human_duration(max(0.0, at - now))
    return DASH


def _num(value: object) -> str:
    return DASH if value is None else str(value)


def service_row(svc: Mapping[str, Any], events: Mapping[str, Mapping[str, Any]]) -> Row:
    """The summary line of one service: totals over its instances."""
    up, total = int(svc.get("up", 0)), int(svc.get("total", 0))
    phase = str(svc.get("phase", ""))
    tone = "green" if up == total and phase == "running" else "yellow"
    if phase == "failed" or svc.get("error"):
        tone = "red"
    if total == 0 and svc.get("completed"):
        state = Text("✓ completed", style="cyan")
    else:
        state = Text(f"{up}/{total} up", style=f"bold {tone}")
    if phase not in ("running", ""):
        state.append(f" {phase}", style=tone)
    notes = []
    if isinstance(svc.get("cold_starts"), int):
        notes.append(f"cold starts {svc['cold_starts']}")
    scaled = events.get(str(svc["name"]))
    if scaled is not None:
        ago = human_duration(max(0.0, time.time() - float(scaled.get("ts", 0))))
        notes.append(f"scaled to {scaled.get('new')} {ago} ago")
    if svc.get("error"):
        notes.append(str(svc["error"]))
    routed = bool(svc.get("routed"))
    cells = {
        "name": Text(f"▾ {svc['name']}", style="bold"),
        "state": state,
        "pid": Text(""),
        "port": Text(""),
        "uptime": Text(""),
        "restarts": Text(str(sum(int(i.get("restarts") or 0) for i in svc.get("instances", [])))),
        "retry": Text(""),
        "cpu": Text(f"{float(svc.get('cpu_percent') or 0):.1f}", style="bold"),
        "mem": Text(human_bytes(float(svc.get("rss_bytes") or 0)), style="bold"),
        "rps": Text(rate(svc.get("rps")) if routed else "", style="bold"),
        "p99": Text(millis(svc.get("p99_ms")) if routed else "", style="bold"),
        "inflight": Text(_num(svc.get("in_flight")) if routed else "", style="bold"),
        "trend": Text(sparkline(svc.get("history", {}).get("rps", []), TREND_WIDTH), style="blue")
        if routed
        else Text("not proxied", style="dim"),
        "detail": Text(" · ".join(notes), style="red" if svc.get("error") else "dim"),
    }
    return Row(f"svc:{svc['name']}", str(svc["name"]), str(svc["name"]), cells)


def instance_row(inst: Mapping[str, Any], now: float) -> Row:
    live = inst.get("pid") is not None
    name = f"  {inst['name']}"
    style = ""
    if inst.get("retiring"):
        name, style = f"{name} (old)", "dim"
    elif inst.get("incoming"):
        name = f"{name} (new)"
    restarts = int(inst.get("restarts") or 0)
    cells = {
        "name": Text(name, style=style),
        "state": state_text(str(inst["state"])),
        "pid": Text(_num(inst.get("pid"))),
        "port": Text(_num(inst.get("port"))),
        "uptime": Text(human_duration(float(inst.get("uptime_s") or 0)) if live else DASH),
        "restarts": Text(str(restarts), style="yellow" if restarts else "dim"),
        "retry": Text(next_retry(inst, now)),
        "cpu": Text(f"{float(inst.get('cpu_percent') or 0):.1f}" if live else DASH),
        "mem": Text(human_bytes(float(inst.get("rss_bytes") or 0)) if live else DASH),
        "rps": Text(rate(inst.get("rps"))),
        "p99": Text(millis(inst.get("p99_ms"))),
        "inflight": Text(_num(inst.get("in_flight"))),
        "trend": Text(""),
        "detail": Text(str(inst.get("detail") or ""), style="dim"),
    }
    key = f"inst:{inst['name']}#{inst.get('generation', 0)}{'-old' if inst.get('retiring') else ''}"
    return Row(key, str(inst["name"]), str(inst["service"]), cells)


def rows(snapshot: Mapping[str, Any], events: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """A service line, then its instances, for every service in start order."""
    now = time.time()
    out: list[Row] = []
    for svc in snapshot.get("services", []):
        out.append(service_row(svc, events))
        out.extend(instance_row(inst, now) for inst in svc.get("instances", []))
    return out


def title(snapshot: Mapping[str, Any] | None, connected: bool) -> Text:
    """The top line: project, daemon, totals, connection."""
    text = Text()
    text.append(" corral top ", style="bold reverse")
    if snapshot is None:
        text.append("  connecting…" if connected else "  daemon not reachable, retrying")
        return text
    d = snapshot.get("daemon", {})
    t = snapshot.get("totals", {})
    text.append(f"  {snapshot.get('project', '')}", style="bold")
    text.append(f"  daemon {d.get('pid')} up {human_duration(float(d.get('uptime_s') or 0))}")
    if d.get("proxy"):
        text.append(f"  proxy {', '.join(d['proxy'])}")
    ok = t.get("up") == t.get("instances")
    text.append(f"  {t.get('up')}/{t.get('instances')} up", style="green" if ok else "yellow")
    if t.get("completed"):
        text.append(f" · {t['completed']} done")
    text.append(f"  {rate(t.get('rps'))} req/s  cpu {float(t.get('cpu_percent') or 0):.1f}%")
    text.append(f"  mem {human_bytes(float(t.get('rss_bytes') or 0))}")
    if not connected:
        text.append("  ✖ disconnected, retrying", style="bold red")
    return text


def detail(svc: Mapping[str, Any] | None, width: int) -> Text:
    """The selected service's traffic over the last minute(s), as two labelled sparklines."""
    if svc is None:
        return Text("")
    text = Text()
    text.append(f" {svc['name']} ", style="bold reverse")
    if not svc.get("routed"):
        text.append("  not behind the proxy: no request figures", style="dim")
        return text
    history = svc.get("history", {})
    span = max(8, (width - 60) // 2)
    text.append("  req/s ")
    text.append(sparkline(history.get("rps", []), span) or "·" * 3, style="blue")
    text.append(f" {rate(svc.get('rps'))}", style="bold")
    text.append("   p99 ")
    text.append(sparkline(history.get("p99_ms", []), span) or "·" * 3, style="magenta")
    text.append(f" {millis(svc.get('p99_ms'))}", style="bold")
    text.append(f"   in flight {_num(svc.get('in_flight'))}")
    return text
