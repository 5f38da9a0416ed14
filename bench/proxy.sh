#!/usr/bin/env bash
# Proxy benchmark: the same two aiohttp+uvloop backends behind Corral, nginx and HAProxy.
#
#   bash bench/proxy.sh            # needs wrk, nginx, haproxy on PATH (or in /usr/sbin)
#   DURATION=10 CONNS=64 THREADS=2 ROUNDS=3 bash bench/proxy.sh
#   INSTALL=1 bash bench/proxy.sh  # apt-get install them first (root, Debian/Ubuntu)
#
# Each round runs wrk against every target in turn (order rotated per round); the report gives
# the median over rounds. Everything listens on 127.0.0.1. Only processes started here are
# stopped, by pid.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
PATH="$PATH:/usr/sbin:/sbin"

if [[ "${INSTALL:-0}" == 1 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
fi
for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "missing $tool (INSTALL=1 installs it)" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/corral-bench.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # wait_http PORT: until it answers 200, at most 10 s
    for _ in $(seq 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2; exit 1
}

B1=$(free_port); B2=$(free_port); PC=$(free_port); PN=$(free_port); PH=$(free_port)

"$PY" "$HERE/proxy_backend.py" "$B1" & PIDS+=($!)
"$PY" "$HERE/proxy_backend.py" "$B2" & PIDS+=($!)
wait_http "$B1"; wait_http "$B2"

"$PY" "$HERE/proxy_corral.py" "$PC" "$B1" "$B2" 2>"$WORK/corral.log" & PIDS+=($!)

cat >"$WORK/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    fastcgi_temp_path $WORK/nginx-fastcgi;
    uwsgi_temp_path $WORK/nginx-uwsgi;
    scgi_temp_path $WORK/nginx-scgi;
    upstream backends {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PN;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)

cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$PH
    default_backend be
backend be
    balance roundrobin
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
CONF
haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!)

wait_http "$PC"; wait_http "$PN"; wait_http "$PH"

run() {  # run NAME PORT ROUND
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$2/" >/dev/null
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$2/" \
        >"$WORK/$1.$3.txt"
}
busy_percent() {  # CPU time not idle over one second, all CPUs
    read -r _ u1 n1 s1 i1 w1 q1 sq1 _ </proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 _ </proc/stat
    local busy=$(( (u2 + n2 + s2 + q2 + sq2) - (u1 + n1 + s1 + q1 + sq1) ))
    local idle=$(( (i2 + w2) - (i1 + w1) ))
    echo $(( 100 * busy / (busy + idle) ))
}
busy=$(busy_percent)
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s x $ROUNDS rounds, $(nproc) CPUs, ${busy}% busy" \
    "before start, backends on :$B1 :$B2"
if (( busy > 20 )); then
    echo "warning: something else is using the CPUs; expect noisy numbers" >&2
fi
ARGS=()
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round so no target always runs first (or last).
    order=(direct corral nginx haproxy)
    shift_by=$(( (round - 1) % 4 ))
    order=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
    for name in "${order[@]}"; do
        case $name in
            direct) run direct "$B1" "$round" ;;
            corral) run corral "$PC" "$round" ;;
            nginx) run nginx "$PN" "$round" ;;
            haproxy) run haproxy "$PH" "$round" ;;
        esac
    done
done
for name in direct corral nginx haproxy; do
    for round in $(seq "$ROUNDS"); do ARGS+=("$name=$WORK/$name.$round.txt"); done
done
"$PY" "$HERE/proxy_report.py" "${ARGS[@]}"
