#!/usr/bin/env bash
# Supervisor benchmark: Corral against supervisord, N = 20 and 100 copies of `python3 -m http.server`.
#
#   bash bench/supervise.sh                 # both tools, N=20 and N=100: about 3 minutes
#   NS=20 REPS=1 RESTARTS=3 bash bench/supervise.sh
#   bash bench/supervise.sh --idle-health 0 # extra flags go to bench/supervise_bench.py
#   JSON_OUT=/tmp/supervise.json bash bench/supervise.sh   # also keep every sample
#
# Run it on a quiet machine: it reports how busy the CPU was before each cycle.
# Installs supervisord with pip into a throwaway venv under /tmp (no system-wide daemon). Both
# tools run the same interpreter (the real one behind `python3`, not a pyenv shim). Everything
# lives in one temp dir; only processes started here are stopped, by pid, even on error.
# The measuring is done by bench/supervise_bench.py (see its docstring for what is measured).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CORRAL="${CORRAL:-$ROOT/.venv/bin/corral}"
NS="${NS:-20,100}"
REPS="${REPS:-3}"
RESTARTS="${RESTARTS:-5}"

[[ -x "$CORRAL" ]] || { echo "no $CORRAL: run 'make up' or install the project into .venv" >&2; exit 1; }

WORK="$(mktemp -d /tmp/corral-supervise.XXXXXX)"
cleanup() {
    "$PY" "$HERE/supervise_bench.py" --work "$WORK" --cleanup || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The instances' `python3`: resolve shims (pyenv's is a bash script that would add ~50 ms per spawn).
REAL_PY="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
export PATH="$WORK/bin:$PATH"
mkdir -p "$WORK/bin"
ln -s "$REAL_PY" "$WORK/bin/python3"

echo "installing supervisor into $WORK/sv ..." >&2
python3 -m venv "$WORK/sv"
"$WORK/sv/bin/pip" install -q --disable-pip-version-check supervisor 2>&1 | grep -v '^WARNING: Location' >&2 || true
[[ -x "$WORK/sv/bin/supervisord" ]] || { echo "supervisord did not install" >&2; exit 1; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -sr)" >&2
echo "python3: $REAL_PY ($("$REAL_PY" --version 2>&1)); corral $("$PY" -c 'import importlib.metadata as m; print(m.version("corral"))'); supervisord $("$WORK/sv/bin/supervisord" --version)" >&2

"$PY" "$HERE/supervise_bench.py" \
    --work "$WORK" \
    --corral "$CORRAL" \
    --supervisord-bin "$WORK/sv/bin" \
    --ns "$NS" \
    --reps "$REPS" \
    --restarts "$RESTARTS" \
    ${JSON_OUT:+--json "$JSON_OUT"} \
    "$@"
