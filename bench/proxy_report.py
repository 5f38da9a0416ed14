"""Summarise wrk outputs for bench/proxy.sh.

`proxy_report.py NAME=FILE...`: a NAME given several times (one file per round) is reported as
the median over its rounds; every round's req/s is listed too.
"""

from __future__ import annotations

import re
import statistics
import sys

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unparsable latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _find(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise ValueError(f"no match for {pattern!r} in wrk output")
    return m.group(1)


def parse(output: str) -> dict[str, float]:
    """req/s, p50 and p99 (ms), and error counts from `wrk --latency` output."""
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {
        "rps": float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        "p50": _ms(_find(r"^\s+50%\s+(\S+)", output)),
        "p99": _ms(_find(r"^\s+99%\s+(\S+)", output)),
        "errors": errors,
    }


def main() -> None:
    runs: dict[str, list[dict[str, float]]] = {}
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        with open(path) as f:
            runs.setdefault(name, []).append(parse(f.read()))
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
        | {"errors": sum(r["errors"] for r in rs)}
        for name, rs in runs.items()
    }
    print(f"{'target':<9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}   req/s per round")
    for name, r in med.items():
        rounds = " ".join(f"{x['rps']:.0f}" for x in runs[name])
        print(
            f"{name:<9} {r['rps']:>8.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
            f"{r['errors']:>6.0f}   {rounds}"
        )
    corral = med.get("corral")
    for other in ("nginx", "haproxy", "direct"):
        if corral and other in med:
            o = med[other]
            print(
                f"corral/{other}: throughput {corral['rps'] / o['rps']:.2f}x, "
                f"p99 {corral['p99'] / o['p99']:.2f}x"
            )


if __name__ == "__main__":
    main()
