#!/usr/bin/env bash
# Scale-to-zero benchmark: Corral's cold start, frozen resume and scale-out (docs/serverless.md).
#
#   bash bench/coldstart.sh                 # about a minute
#   REPS=20 CLIENTS=64 bash bench/coldstart.sh
#
# A small aiohttp app (bench/coldstart_app.py) is started by hand and polled, then served by
# Corral at zero: the gap between the two cold starts is Corral's overhead. Everything lives in
# one temp dir; only processes started here are stopped, by pid, even on error. The measuring is
# done by bench/coldstart_bench.py (its docstring says what is measured).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CORRAL="${CORRAL:-$ROOT/.venv/bin/corral}"
REPS="${REPS:-10}"
CLIENTS="${CLIENTS:-32}"

[[ -x "$CORRAL" ]] || { echo "no $CORRAL: run 'make install' first" >&2; exit 1; }
"$PY" -c 'import aiohttp' 2>/dev/null || { echo "$PY has no aiohttp" >&2; exit 1; }

WORK="$(mktemp -d /tmp/corral-coldstart.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "machine: $(nproc) cores, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg); $("$PY" --version)" >&2
"$PY" "$HERE/coldstart_bench.py" --work "$WORK" --corral "$CORRAL" --python "$PY" \
    --reps "$REPS" --clients "$CLIENTS" "$@"
