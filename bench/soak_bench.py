"""Soak: 100 instances, a health check on each every second, steady traffic, for a long time.

Run through `bash bench/soak.sh`. The daemon's RSS, CPU (% of one core over the interval),
open fds and threads are sampled every --sample seconds, with the requests and errors of that
interval. The goal is a flat RSS: what the daemon holds must not grow with time, checks or
requests. Growth is reported from the first sample after warm-up to the last, and per hour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from benchstack import (
    Stack,
    free_port,
    machine,
    percentile,
    stack_config,
    start_load,
    stop_load,
    wait_for,
)

HEALTH = 'health = { http = "/healthz", interval = "1s", timeout = "500ms", retries = 3 }'


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--corral", required=True)
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--duration", default="30m", help="e.g. 30m, 5m, 90s")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    duration = parse_duration(args.duration)

    port = free_port()
    text = stack_config(port, args.instances, f'stop_timeout = "2s"\n{HEALTH}')
    stack = Stack(args.work, args.corral, text)
    print(
        f"soak: {machine()}; {args.instances} instances, health every 1 s, "
        f"{args.rate:g} req/s over {args.connections} keep-alive connections, "
        f"{args.duration}, a sample every {args.sample:g} s",
        flush=True,
    )
    samples: list[dict[str, float]] = []
    try:
        t = time.monotonic()
        stack.up()
        wait_for(
            lambda: sum(r["state"] == "ready" for r in stack.ps()) == args.instances,
            180,
            "every instance ready",
            poll=0.5,
        )
        print(f"  {args.instances} instances ready in {time.monotonic() - t:.1f} s", flush=True)
        pid = stack.daemon_pid()
        assert pid is not None
        daemon = psutil.Process(pid)
        load, thread = start_load(port, args.connections, rate=args.rate)
        header = ("min", "rss_MB", "cpu%", "fds", "threads", "requests", "errors", "p99_ms")
        print("  ".join(f"{h:>8}" for h in header), flush=True)
        start = time.monotonic()
        cpu = sum(daemon.cpu_times()[:2])
        seen = 0
        while True:
            now = time.monotonic()
            records = load.records[seen:]
            seen += len(records)
            cpu_now = sum(daemon.cpu_times()[:2])
            interval = (now - start) - (samples[-1]["t"] if samples else 0.0)
            sample = {
                "t": now - start,
                "rss_mb": daemon.memory_info().rss / 2**20,
                "cpu_pct": 100 * (cpu_now - cpu) / interval if samples else 0.0,
                "fds": daemon.num_fds(),
                "threads": daemon.num_threads(),
                "requests": len(records),
                "errors": sum(r.outcome != "ok" for r in records),
                "p99_ms": percentile([r.latency for r in records], 0.99) * 1000,
            }
            cpu = cpu_now
            samples.append(sample)
            cells = (
                f"{sample['t'] / 60:.1f}",
                f"{sample['rss_mb']:.1f}",
                f"{sample['cpu_pct']:.1f}" if len(samples) > 1 else "-",
                sample["fds"],
                sample["threads"],
                sample["requests"],
                sample["errors"],
                f"{sample['p99_ms']:.1f}" if records else "-",
            )
            print("  ".join(f"{c!s:>8}" for c in cells), flush=True)
            if now - start >= duration:
                break
            time.sleep(max(0.0, min(args.sample, duration - (now - start))))
        stop_load(load, thread)
        states = [r["state"] for r in stack.ps()]
        log = stack.daemon_log().splitlines()
        problems = [line for line in log if "Traceback" in line or " ERROR " in line]
        report(samples, load.records, states, problems)
        if args.json:
            args.json.write_text(json.dumps(samples, indent=2))
    finally:
        stack.cleanup()
    return 0


def report(
    samples: list[dict[str, float]],
    records: Sequence[object],
    states: list[str],
    problems: list[str],
) -> None:
    # The first sample is taken before any traffic; growth counts from the second.
    base = samples[1] if len(samples) > 2 else samples[0]
    last = samples[-1]
    hours = max((last["t"] - base["t"]) / 3600, 1e-9)
    growth = last["rss_mb"] - base["rss_mb"]
    cpus = [s["cpu_pct"] for s in samples[1:]]
    errors = sum(int(s["errors"]) for s in samples)
    print(
        f"RSS {base['rss_mb']:.1f} MB at minute {base['t'] / 60:.0f} -> {last['rss_mb']:.1f} MB "
        f"at minute {last['t'] / 60:.0f} (max {max(s['rss_mb'] for s in samples):.1f}): "
        f"{growth:+.1f} MB, {growth / hours:+.1f} MB/hour; goal: flat"
    )
    if cpus:
        print(
            f"daemon CPU {min(cpus):.1f}-{max(cpus):.1f} % of one core; fds {base['fds']:.0f} -> {last['fds']:.0f}"
        )
    print(f"requests {len(records)}, errors {errors}; instances at the end: {sorted(set(states))}")
    print(f"daemon log: {len(problems)} ERROR/Traceback lines" + (":" if problems else ""))
    for line in problems[:10]:
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
