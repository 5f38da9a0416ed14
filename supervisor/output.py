"""Terminal output: coloured `service.N | line` log prefixes, the `ps` and `status` tables."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

_COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


class LogPrinter:
    """Prints log records with a stable colour per service and aligned prefixes."""

    def __init__(self, stream: TextIO = sys.stdout, colour: bool | None = None) -> None:
        self.stream = stream
        self.colour = use_colour(stream) if colour is None else colour
        self._colours: dict[str, int] = {}
        self._width = 8

    def prefix(self, service: str, index: int) -> str:
        name = f"{service}.{index}" if index else service
        self._width = max(self._width, len(name))
        text = f"{name:<{self._width}} |"
        if not self.colour:
            return text
        code = self._colours.setdefault(service, _COLOURS[len(self._colours) % len(_COLOURS)])
        return f"\033[{code}m{text}\033[0m"

    def print(self, record: Mapping[str, Any]) -> None:
        line = record["line"]
        if record.get("stream") == "corral":
            line = f"[corral] {line}" if not self.colour else f"\033[2m[corral] {line}\033[0m"
        self.stream.write(f"{self.prefix(record['service'], record['index'])} {line}\n")
        self.stream.flush()


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def _detail(row: Mapping[str, Any]) -> str:
    """DETAIL: what the instance waits for or why it is down; once up again after a restart,
    why it restarted."""
    detail = str(row.get("detail") or "")
    if not detail and row.get("last_restart"):
        return f"restarted: {row['last_restart']}"
    caps = str(row.get("caps") or "")
    if not detail and " not applied: " in caps:
        return "caps not applied: " + caps.split(" not applied: ", 1)[1]  # `status` has all
    return detail


def ps_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ("NAME", "STATE", "PID", "PORT", "RESTARTS", "UPTIME", "CPU%", "MEM", "DETAIL")
    table = [header]
    for r in rows:
        state = str(r["state"])
        if r.get("retiring"):
            state += " (old, draining)"
        elif r.get("incoming"):
            state += " (new)"
        elif r.get("phase") == "rolling":
            state += " (rolling)"
        table.append(
            (
                str(r["name"]),
                state,
                "-" if r["pid"] is None else str(r["pid"]),
                "-" if r["port"] is None else str(r["port"]),
                str(r["restarts"]),
                human_duration(float(r["uptime_s"])) if r["pid"] else "-",
                f"{float(r.get('cpu_percent', 0.0)):.1f}" if r["pid"] else "-",
                human_bytes(float(r.get("rss_bytes", 0))) if r["pid"] else "-",
                _detail(r)[:60],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for line in table:
        cells = [cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(lines)


def scale_lines(status: Mapping[str, Any]) -> list[str]:
    """Under `corral ps`: each autoscaled service's desired vs actual count, and why."""
    lines = []
    for name, service in status.get("services", {}).items():
        scale = service.get("autoscale")
        if not isinstance(scale, Mapping):
            continue
        text = (
            f"{name}: autoscaled {scale['min']}-{scale['max']}, {scale['ready']} ready of "
            f"{scale['desired']} desired: {scale['reason']}"
        )
        starts = int(scale.get("cold_starts") or 0)
        thaws = int(scale.get("thaws") or 0)
        if starts or thaws:
            counts = [f"{starts} cold start{'s' if starts != 1 else ''}"] if starts else []
            counts += [f"{thaws} thaw{'s' if thaws != 1 else ''}"] if thaws else []
            last = scale.get("last_cold_start_ms")
            text += f" ({', '.join(counts)}" + (f", last {last:g} ms)" if last is not None else ")")
        lines.append(text)
    return lines


def status_text(status: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """`corral status`: the daemon, its proxy, and one line per service."""
    proxy = status.get("proxy")
    listen = ", ".join(proxy.get("listen", [])) if isinstance(proxy, Mapping) else ""
    lines = [
        f"daemon   pid {status['pid']}, up {human_duration(float(status['uptime_s']))}",
        f"config   {status['config']} (project {status['project']})",
        f"socket   {status['socket']}",
        f"proxy    {listen or 'off'}",
        "",
    ]
    table = [("SERVICE", "PHASE", "INSTANCES", "DESIRED", "ERROR")]
    for name, service in status["services"].items():
        states: dict[str, int] = {}
        for row in rows:
            if row["service"] == name and not row.get("retiring") and not row.get("incoming"):
                states[str(row["state"])] = states.get(str(row["state"]), 0) + 1
        desired = str(service["desired"])
        scale = service.get("autoscale")
        if isinstance(scale, Mapping):
            desired += f" (autoscaled {scale['min']}-{scale['max']})"
        elif service["desired"] != service["configured"]:
            desired += f" (config: {service['configured']})"
        table.append(
            (
                name,
                str(service["phase"]),
                ", ".join(f"{n} {state}" for state, n in states.items()) or "-",
                desired,
                str(service.get("error") or "")[:60],
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        cells = [cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    capped = [(n, str(s["caps"])) for n, s in status["services"].items() if s.get("caps")]
    if capped:
        lines += ["", "cgroup caps"]
        lines += [f"  {name:<{max(len(n) for n, _ in capped)}}  {caps}" for name, caps in capped]
    return "\n".join(lines)
