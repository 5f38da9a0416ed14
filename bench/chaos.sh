#!/usr/bin/env bash
# Chaos: keep-alive traffic through Corral's proxy while instances are kill -9'd, one is
# SIGSTOPped, and the daemon itself is restarted (gracefully, then with SIGKILL).
#
#   bash bench/chaos.sh                        # about 1 minute
#   INSTANCES=6 CONNECTIONS=64 bash bench/chaos.sh
#   JSON_OUT=/tmp/chaos.json bash bench/chaos.sh
#
# Bounded: a fixed schedule of faults, 32 client connections by default, all traffic to
# 127.0.0.1. Everything lives in one temp dir; only processes started here are stopped, by pid,
# even on error. The work is done by bench/chaos_bench.py (its docstring says what is measured).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CORRAL="${CORRAL:-$ROOT/.venv/bin/corral}"
[[ -x "$CORRAL" ]] || { echo "no $CORRAL: run 'make install' first" >&2; exit 1; }

WORK="$(mktemp -d /tmp/corral-chaos.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

"$PY" "$HERE/chaos_bench.py" \
    --work "$WORK" \
    --corral "$CORRAL" \
    --instances "${INSTANCES:-4}" \
    --connections "${CONNECTIONS:-32}" \
    ${JSON_OUT:+--json "$JSON_OUT"} \
    "$@"
