#!/usr/bin/env bash
# Soak: 100 instances, an HTTP health check on each every second, steady traffic through the
# proxy; the daemon's RSS, CPU, fds and threads sampled every minute. Goal: a flat RSS.
#
#   bash bench/soak.sh                          # 30 minutes (not run in CI)
#   DURATION=5m bash bench/soak.sh              # a short proof run
#   DURATION=2h SAMPLE=300 RATE=500 bash bench/soak.sh
#   JSON_OUT=/tmp/soak.json bash bench/soak.sh  # also keep every sample
#
# Bounded: a fixed request rate (200/s by default) over 16 keep-alive connections, all traffic
# to 127.0.0.1. Everything lives in one temp dir; only processes started here are stopped, by
# pid, even on error. The work is done by bench/soak_bench.py.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CORRAL="${CORRAL:-$ROOT/.venv/bin/corral}"
[[ -x "$CORRAL" ]] || { echo "no $CORRAL: run 'make install' first" >&2; exit 1; }

WORK="$(mktemp -d /tmp/corral-soak.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

"$PY" "$HERE/soak_bench.py" \
    --work "$WORK" \
    --corral "$CORRAL" \
    --instances "${INSTANCES:-100}" \
    --duration "${DURATION:-30m}" \
    --sample "${SAMPLE:-60}" \
    --rate "${RATE:-200}" \
    ${JSON_OUT:+--json "$JSON_OUT"} \
    "$@"
