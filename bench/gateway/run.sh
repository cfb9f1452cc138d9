#!/usr/bin/env bash
# Portico's /healthz against nginx `return 200`, same machine, same run, same worker count,
# same certificate (ECDSA P-256 from `portico cert`), same TLS version (1.3), HTTP and HTTPS
# keep-alive, wrk with one thread and 64 connections. For each worker count in WORKERS
# (default "1 2"): access logs to files on both, then access logs off on both.
# With 1 worker each, the server has one core and wrk the other; with 2, three busy threads
# share the 2 cores and the result depends on how connections spread over the workers.
# Usage: bash bench/gateway/run.sh   (needs wrk and nginx: apt-get install wrk nginx-light)
. "$(dirname "$0")/../lib.sh"

build_release
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
RESULTS=$WORK/results.txt
"$PORTICO" cert --host localhost --key-type ecdsa --out "$WORK" >/dev/null

start_nginx() { # http_port https_port access_log workers
  local http=$1 https=$2 log=$3 workers=$4
  cat >"$WORK/nginx.conf" <<CONF
worker_processes $workers;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $log;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$http;
    listen 127.0.0.1:$https ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $WORK/localhost.crt;
    ssl_certificate_key $WORK/localhost.key;
    location = /healthz { default_type application/json; return 200 '{"status":"ok"}\n'; }
  }
}
CONF
  nginx -c "$WORK/nginx.conf" -p "$WORK"
  wait_port "$http"; wait_port "$https"
}

start_portico() { # http_port https_port access_log(true|false) workers
  local http=$1 https=$2 access=$3 workers=$4
  cat >"$WORK/portico.toml" <<CONF
data_dir = "$WORK/data"
allow_root = true
workers = $workers
[log]
dir = "$WORK/portico-logs"
access_log = $access
[[listener]]
addr = "127.0.0.1:$http"
services = ["admin"]
[[listener]]
addr = "127.0.0.1:$https"
tls = { cert = "$WORK/localhost.crt", key = "$WORK/localhost.key" }
services = ["admin"]
CONF
  "$PORTICO" serve --config "$WORK/portico.toml" >/dev/null &
  PORTICO_PID=$!
  wait_port "$http"; wait_port "$https"
}

round() { # name nginx_log portico_access workers
  local name=$1 workers=$4
  local nh nhs ph phs
  nh=$(free_port); nhs=$(free_port); ph=$(free_port); phs=$(free_port)
  start_nginx "$nh" "$nhs" "$2" "$workers"
  start_portico "$ph" "$phs" "$3" "$workers"
  for round in 1 2; do
    wrk_run "nginx   w$workers http  $name (#$round)" "http://127.0.0.1:$nh/healthz"
    wrk_run "portico w$workers http  $name (#$round)" "http://127.0.0.1:$ph/healthz"
    wrk_run "nginx   w$workers https $name (#$round)" "https://127.0.0.1:$nhs/healthz"
    wrk_run "portico w$workers https $name (#$round)" "https://127.0.0.1:$phs/healthz"
  done
  kill "$(cat "$WORK/nginx.pid")"; kill "$PORTICO_PID"; wait "$PORTICO_PID" || true
  sleep 0.5
}

echo "load before: $(uptime)"
echo "wrk -t${WRK_THREADS:-1} -c${WRK_CONNS:-64} -d${WRK_SECONDS:-10}s, nginx $(nginx -v 2>&1 | cut -d/ -f2), $(nproc) cores"
for workers in ${WORKERS:-1 2}; do
  round "logs-on " "$WORK/nginx-access.log" true "$workers"
  round "logs-off" "off" false "$workers"
done
echo
echo "ratios (portico / nginx, req/s, both rounds summed):"
awk '{key=$2" "$3" "$4; if ($1=="nginx") n[key]+=$6; else p[key]+=$6} END {for (k in n) printf "  %-20s %.2f\n", k, p[k]/n[k]}' "$RESULTS" | sort
