"""Chaos: keep-alive traffic through Corral's proxy while instances and the daemon are hurt.

Run through `bash bench/chaos.sh`. One real daemon, N instances of bench/chaos_backend.py
behind the proxy, a bounded concurrent keep-alive client (aiohttp, GETs: /, /slow, /big), and,
one after the other:

1. baseline: no faults; per-path median latency;
2. kill -9: every instance killed twice, one at a time, each back to ready before the next;
3. SIGSTOP: one instance frozen; how long until health takes it out of the pool, how long the
   requests already on it stalled, and how the supervisor ends it (liveness restart);
4. restart: `corral down` + `corral up -d` (graceful: no request may fail);
5. kill daemon: the daemon killed with SIGKILL and `corral up -d` (its instances die with it;
   the next daemon reclaims; requests in flight when it died fail);
6. recovery: no faults.

Each request, counted in the phase it ended in, is one of: ok, cut (the response started but ended early: a kill mid-body),
no-response, 5xx, refused (no listener: the daemon is down), timeout. The goal is 0 failed
idempotent requests apart from cut ones while the daemon runs; while the daemon is down there
is no proxy, so connections are refused (reported apart, with how long it lasted).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from benchstack import (
    Record,
    Stack,
    free_port,
    machine,
    median,
    percentile,
    stack_config,
    start_load,
    stop_load,
    wait_for,
)

FAILED = ("no-response", "5xx", "timeout")


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    note: str = ""


def config(port: int, instances: int, stop: str, drain: str) -> str:
    health = '{ http = "/healthz", interval = "500ms", timeout = "300ms", retries = 2 }'
    keys = f'stop_timeout = "{stop}"\ndrain_timeout = "{drain}"\nhealth = {health}'
    return stack_config(port, instances, keys)


def ready_rows(stack: Stack) -> list[dict[str, object]]:
    return [r for r in stack.ps() if r["state"] == "ready"]


def all_ready(stack: Stack, n: int) -> bool:
    return len(ready_rows(stack)) == n


def kill_phase(stack: Stack, instances: int, rounds: int) -> str:
    restarts = []
    for _ in range(rounds):
        for index in range(1, instances + 1):
            row = next(r for r in stack.ps() if r["index"] == index)
            pid = int(str(row["pid"]))
            os.kill(pid, signal.SIGKILL)  # a pid of ours: read from `corral ps` just now
            took = wait_for(
                lambda i=index, p=pid: any(
                    r["index"] == i and r["state"] == "ready" and r["pid"] != p for r in stack.ps()
                ),
                30,
                f"web.{index} back after kill -9",
            )
            restarts.append(took)
            time.sleep(0.3)
    return (
        f"{len(restarts)} kills; back to ready in median {median(restarts) * 1000:.0f} ms, "
        f"max {max(restarts) * 1000:.0f} ms"
    )


def stop_phase(stack: Stack, instances: int) -> tuple[str, str, float, float]:
    row = next(r for r in stack.ps() if r["index"] == 1)
    name, pid = str(row["name"]), int(str(row["pid"]))
    frozen = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        out = wait_for(
            lambda: any(r["name"] == name and r["state"] != "ready" for r in stack.ps()),
            30,
            f"{name} out of the pool after SIGSTOP",
            poll=0.02,
        )
        ended = wait_for(
            lambda: not _alive(pid) or _zombie(pid), 30, f"{name} (pid {pid}) ended", poll=0.05
        )
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: all_ready(stack, instances), 60, "every instance ready again")
    note = (
        f"{name} SIGSTOPped: out of the pool after {out:.2f} s, "
        f"killed by the supervisor after {out + ended:.2f} s"
    )
    return note, name, frozen, frozen + out


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def graceful_restart_phase(stack: Stack, instances: int) -> str:
    t = time.monotonic()
    stack.down()
    down = time.monotonic() - t
    stack.up()
    wait_for(lambda: all_ready(stack, instances), 60, "ready after restart")
    return f"down {down:.2f} s + up -d {time.monotonic() - t - down:.2f} s"


def kill_daemon_phase(stack: Stack, instances: int) -> str:
    pid = stack.daemon_pid()
    t = time.monotonic()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid) or _zombie(pid), 30, "the killed daemon gone")
    stack.up()
    wait_for(lambda: all_ready(stack, instances), 60, "ready after kill -9 of the daemon")
    return f"kill -9 + up -d: {time.monotonic() - t:.2f} s"


def summarize(
    records: list[Record],
    phases: list[Phase],
    stopped: tuple[str, float, float],
) -> dict[str, Any]:
    # A request belongs to the phase it ended in, where its outcome happened: one started
    # just before the daemon is killed is that kill's, not the previous phase's.
    def ended_in(r: Record, phase: Phase) -> bool:
        return phase.start <= r.start + r.latency < phase.end

    base = [r for r in records if ended_in(r, phases[0]) and r.outcome == "ok"]
    base_p50 = {p: median([r.latency for r in base if r.path == p]) for p in ("/", "/slow", "/big")}
    rows = []
    for phase in phases:
        mine = [r for r in records if ended_in(r, phase)]
        outcomes = Counter(r.outcome for r in mine)
        ok = [r for r in mine if r.outcome == "ok"]
        added = [r.latency - base_p50[r.path] for r in ok]
        rows.append(
            {
                "phase": phase.name,
                "requests": len(mine),
                **{k: outcomes.get(k, 0) for k in ("ok", "cut", *FAILED, "refused")},
                "p99_added_ms": round(percentile(added, 0.99) * 1000, 1) if added else None,
                "max_added_ms": round(max(added) * 1000, 1) if added else None,
                "note": phase.note,
            }
        )
    refused = sorted(r.start for r in records if r.outcome == "refused")
    outages, first, last = [], None, None
    for t in refused:  # refusals closer than 0.5 s apart belong to one outage
        if first is None or last is None or t - last > 0.5:
            if first is not None and last is not None:
                outages.append(last - first)
            first = t
        last = t
    if first is not None and last is not None:
        outages.append(last - first)
    name, frozen, out = stopped
    window = [r for r in records if frozen <= r.start < out]
    stalled = [r for r in window if r.latency > 1.0]
    return {
        "baseline_p50_ms": {p: round(v * 1000, 2) for p, v in base_p50.items()},
        "refused_outages_s": [round(o, 2) for o in outages],
        "phases": rows,
        "sigstop": {
            "instance": name,
            "requests_started_before_removal": len(window),
            "stalled_over_1s": len(stalled),
            "longest_stall_s": round(max((r.latency for r in window), default=0.0), 2),
            "stalled_outcomes": dict(Counter(r.outcome for r in stalled)),
        },
    }


def print_report(summary: dict[str, Any], total: int, log_problems: list[str]) -> None:
    print(f"baseline median latency (ms): {summary['baseline_p50_ms']}")
    header = (
        "phase",
        "requests",
        "ok",
        "cut",
        "no-resp",
        "5xx",
        "timeout",
        "refused",
        "p99+ms",
        "max+ms",
    )
    print("  ".join(f"{h:>9}" for h in header))
    for row in summary["phases"]:
        cells = (
            row["phase"],
            row["requests"],
            row["ok"],
            row["cut"],
            row["no-response"],
            row["5xx"],
            row["timeout"],
            row["refused"],
            row["p99_added_ms"],
            row["max_added_ms"],
        )
        print("  ".join(f"{c!s:>9}" for c in cells))
        if row["note"]:
            print(f"{'':>11}{row['note']}")
    s = summary["sigstop"]
    print(
        f"SIGSTOP of {s['instance']}: {s['requests_started_before_removal']} requests started "
        f"before it left the pool; {s['stalled_over_1s']} stalled > 1 s, longest "
        f"{s['longest_stall_s']} s; their outcomes {s['stalled_outcomes']}"
    )
    phases = summary["phases"]
    down = ("restart", "kill daemon")
    running = [p for p in phases if p["phase"] not in down]
    failed = sum(p["no-response"] + p["5xx"] + p["timeout"] for p in running)
    by_phase = {p["phase"]: p["no-response"] + p["5xx"] + p["timeout"] for p in phases}
    cut = sum(p["cut"] for p in phases)
    refused = sum(p["refused"] for p in phases)
    worst = max((p["max_added_ms"] or 0) for p in running)
    calm = max((p["max_added_ms"] or 0) for p in running if p["phase"] != "sigstop")
    outages = summary["refused_outages_s"]
    print(
        f"TOTAL requests {total}  failed {failed} (while the daemon ran; goal 0)  "
        f"cut mid-body {cut}  max added latency {worst:.0f} ms "
        f"({calm:.0f} ms outside the SIGSTOP stall)"
    )
    print(
        f"graceful restart: {by_phase['restart']} requests failed (goal 0); kill -9 of the "
        f"daemon: {by_phase['kill daemon']} failed (in flight when it died); connections "
        f"refused for {outages} s ({refused} connect attempts)"
    )
    print(f"daemon log: {len(log_problems)} ERROR/Traceback lines" + (":" if log_problems else ""))
    for line in log_problems[:10]:
        print(f"  {line}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--corral", required=True)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--kill-rounds", type=int, default=2)
    p.add_argument("--baseline", type=float, default=3.0, help="seconds")
    # Short by default so a frozen instance is ended quickly; Corral's defaults are 10s / 30s.
    p.add_argument("--stop-timeout", default="2s")
    p.add_argument("--drain-timeout", default="2s")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)

    port = free_port()
    text = config(port, args.instances, args.stop_timeout, args.drain_timeout)
    stack = Stack(args.work, args.corral, text)
    print(
        f"chaos: {machine()}; {args.instances} instances, {args.connections} keep-alive "
        f"clients, proxy 127.0.0.1:{port}; stop_timeout {args.stop_timeout}, "
        f"drain_timeout {args.drain_timeout}",
        flush=True,
    )
    try:
        stack.up()
        wait_for(lambda: all_ready(stack, args.instances), 60, "instances ready")
        load, thread = start_load(port, args.connections)
        phases: list[Phase] = []

        def phase(name: str) -> Phase:
            if phases:
                phases[-1].end = time.monotonic()
            phases.append(Phase(name, time.monotonic()))
            print(f"  {name} ...", flush=True)
            return phases[-1]

        phase("baseline")
        time.sleep(args.baseline)
        current = phase("kill -9")
        current.note = kill_phase(stack, args.instances, args.kill_rounds)
        current = phase("sigstop")
        current.note, name, frozen, out = stop_phase(stack, args.instances)
        current = phase("restart")
        current.note = graceful_restart_phase(stack, args.instances)
        current = phase("kill daemon")
        current.note = kill_daemon_phase(stack, args.instances)
        phase("recovery")
        time.sleep(args.baseline)
        phases[-1].end = time.monotonic()
        stop_load(load, thread)
        summary = summarize(load.records, phases, (name, frozen, out))
        log = stack.daemon_log().splitlines()
        problems = [line for line in log if "Traceback" in line or " ERROR " in line]
        print_report(summary, len(load.records), problems)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        stack.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
