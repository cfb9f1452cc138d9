#!/usr/bin/env bash
# Portico's proxy against nginx `proxy_pass` with keep-alive upstream connections, same
# machine, same run, same upstream: nginx answering a static 200 (its own process, one
# worker). In front, one worker each (Portico `workers = 1`, nginx `worker_processes 1`), the
# same ECDSA P-256 certificate from `portico cert`, TLS 1.3, wrk -t1 -c64 with keep-alive,
# HTTP and HTTPS, two rounds each, access logs to files on both, then off on both. The
# upstream alone is measured too, so "added p99" is the front's p99 minus the upstream's.
#
# Then cold start: time from a first request to its first byte for a service with no
# instance (python3 -m http.server, started by Portico's agent), against that server's own
# start-to-listen time, measured the same way (process start to an accepted TCP connection).
#
# Usage: bash bench/proxy/run.sh   (installs nginx and wrk with apt-get when missing)
#        PARTS=cold bash bench/proxy/run.sh   (the cold start only)
# Runs under /tmp/portico-bench.lock, so benchmarks of other branches do not overlap.
. "$(dirname "$0")/../lib.sh"

if [ -z "${PORTICO_BENCH_LOCKED:-}" ]; then
  export PORTICO_BENCH_LOCKED=1
  exec flock /tmp/portico-bench.lock bash "$0" "$@"
fi
command -v nginx >/dev/null && command -v wrk >/dev/null || {
  apt-get update -q >/dev/null && apt-get install -y -q nginx wrk >/dev/null
}

build_release
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for pid in "$WORK"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$WORK"
}
trap cleanup EXIT
RESULTS=$WORK/results.txt
"$PORTICO" cert --host localhost --key-type ecdsa --out "$WORK" >/dev/null

UP=$(free_port)
start_upstream() {
  mkdir -p "$WORK/up"
  cat >"$WORK/up/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $WORK/upstream.pid;
error_log $WORK/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"answer":"from the upstream"}\n'; }
  }
}
CONF
  nginx -c "$WORK/up/nginx.conf" -p "$WORK/up"
  wait_port "$UP"
}

start_nginx() { # http_port https_port access_log
  local http=$1 https=$2 log=$3
  mkdir -p "$WORK/front"
  cat >"$WORK/front/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/front/error.log;
events { worker_connections 4096; }
http {
  access_log $log;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$http;
    listen 127.0.0.1:$https ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $WORK/localhost.crt;
    ssl_certificate_key $WORK/localhost.key;
    location /up/ {
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
    }
  }
}
CONF
  nginx -c "$WORK/front/nginx.conf" -p "$WORK/front"
  wait_port "$http"; wait_port "$https"
}

start_portico() { # http_port https_port access_log(true|false)
  local http=$1 https=$2 access=$3
  cat >"$WORK/portico.toml" <<CONF
data_dir = "$WORK/data"
allow_root = true
workers = 1
[log]
dir = "$WORK/portico-logs"
access_log = $access
[manager]
agent = false
[[proxy.register]]
service = "up"
addr = "127.0.0.1:$UP"
[[listener]]
addr = "127.0.0.1:$http"
services = ["proxy"]
[[listener]]
addr = "127.0.0.1:$https"
tls = { cert = "$WORK/localhost.crt", key = "$WORK/localhost.key" }
services = ["proxy"]
CONF
  "$PORTICO" serve --config "$WORK/portico.toml" >/dev/null &
  echo $! >"$WORK/portico.pid"
  wait_port "$http"; wait_port "$https"
  # The registration reaches the proxy's view at start; wait until it routes.
  local deadline=$((SECONDS + 10))
  until curl -sf "http://127.0.0.1:$http/up/" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "portico's proxy never routed to the upstream" >&2; exit 1; }
    sleep 0.1
  done
}

stop_fronts() {
  kill "$(cat "$WORK/nginx.pid")" "$(cat "$WORK/portico.pid")" 2>/dev/null || true
  wait "$(cat "$WORK/portico.pid")" 2>/dev/null || true
  rm -f "$WORK/nginx.pid" "$WORK/portico.pid"
  sleep 0.5
}

round() { # name nginx_log portico_access
  local name=$1 nh nhs ph phs
  nh=$(free_port); nhs=$(free_port); ph=$(free_port); phs=$(free_port)
  start_nginx "$nh" "$nhs" "$2"
  start_portico "$ph" "$phs" "$3"
  for round in 1 2; do
    wrk_run "upstream direct -        (#$round)" "http://127.0.0.1:$UP/"
    wrk_run "nginx   http  $name (#$round)" "http://127.0.0.1:$nh/up/"
    wrk_run "portico http  $name (#$round)" "http://127.0.0.1:$ph/up/"
    wrk_run "nginx   https $name (#$round)" "https://127.0.0.1:$nhs/up/"
    wrk_run "portico https $name (#$round)" "https://127.0.0.1:$phs/up/"
  done
  stop_fronts
}

echo "load before: $(uptime)"
if [ "${PARTS:-all}" = all ]; then
echo "wrk -t${WRK_THREADS:-1} -c${WRK_CONNS:-64} -d${WRK_SECONDS:-10}s, nginx $(nginx -v 2>&1 | cut -d/ -f2), $(nproc) cores"
start_upstream
round "logs-on " "$WORK/nginx-access.log" true
round "logs-off" "off" false
echo
echo "ratios (portico / nginx, req/s, both rounds summed):"
awk '$1=="nginx"||$1=="portico" {key=$2" "$3; if ($1=="nginx") n[key]+=$5; else p[key]+=$5}
     END {for (k in n) printf "  %-20s %.2f\n", k, p[k]/n[k]}' "$RESULTS" | sort
echo "added p99 (front p99 - upstream-direct p99 of the same round):"
awk '{ms=$8; if (ms ~ /us$/) {sub(/us$/,"",ms); ms/=1000} else if (ms ~ /ms$/) {sub(/ms$/,"",ms)} else if (ms ~ /s$/) {sub(/s$/,"",ms); ms*=1000}
      if ($1=="upstream") base=ms; else if ($1=="nginx"||$1=="portico") printf "  %-7s %-5s %s %+.2f ms\n", $1, $2, $3, ms-base}' "$RESULTS"
fi

# ------------------------------------------------------------------------------ cold start
echo
# The same interpreter binary both ways (not a pyenv shim that execs it a few scripts later).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
echo "cold start ($PYTHON -m http.server):"
server_alone() { # prints "listen_ms first_byte_ms": process start to an accepted connection,
                 # and to the first byte of GET / (what a proxied first request also waits for)
  local port; port=$(free_port)
  "$PYTHON" - "$PYTHON" "$port" <<'PY'
import socket, subprocess, sys, time
python, port = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
child = subprocess.Popen([python, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                         cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=1)
        break
    except OSError:
        time.sleep(0.001)
listening = time.monotonic()
connection.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
connection.recv(1)
first_byte = time.monotonic()
print(f"{(listening - start) * 1000:.1f} {(first_byte - start) * 1000:.1f}")
child.kill()
PY
}
COLD_SERVICES=7
ph=$(free_port)
{
  echo "data_dir = \"$WORK/cold-data\""
  echo "allow_root = true"
  echo "[[listener]]"
  echo "addr = \"127.0.0.1:$ph\""
  echo "services = [\"proxy\"]"
  echo "[manager]"
  echo "agent_id = \"bench\""
  for n in $(seq 1 $COLD_SERVICES); do
    echo "[[manager.service]]"
    echo "name = \"py$n\""
    echo "command = [\"$PYTHON\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]"
  done
} >"$WORK/cold.toml"
"$PORTICO" serve --config "$WORK/cold.toml" >/dev/null 2>"$WORK/cold.log" &
echo $! >"$WORK/portico.pid"
wait_port "$ph"
for n in $(seq 1 $COLD_SERVICES); do
  read -r listen alone < <(server_alone)
  first=$(curl -s -o /dev/null -w '%{time_starttransfer}' "http://127.0.0.1:$ph/py$n/")
  first_ms=$(awk -v s="$first" 'BEGIN {printf "%.1f", s * 1000}')
  printf '  py%s: through Portico %6s ms to the first byte; the server alone: listening %6s ms, first byte %6s ms; Portico adds %6.1f ms\n' \
    "$n" "$first_ms" "$listen" "$alone" "$(awk -v a="$first_ms" -v b="$alone" 'BEGIN {print a - b}')" | tee -a "$WORK/cold.txt"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
through=$(awk '{print $4}' "$WORK/cold.txt" | median)
listen=$(awk '{print $14}' "$WORK/cold.txt" | median)
alone=$(awk '{print $18}' "$WORK/cold.txt" | median)
echo "  medians of $COLD_SERVICES: through Portico $through ms; the server alone: listening $listen ms, first byte $alone ms"
echo "  Portico adds (median through - median alone, first byte): $(awk -v a="$through" -v b="$alone" 'BEGIN {printf "%.1f", a - b}') ms; per-pair median: $(awk '{print $(NF-1)}' "$WORK/cold.txt" | median) ms"
kill "$(cat "$WORK/portico.pid")"; wait "$(cat "$WORK/portico.pid")" 2>/dev/null || true
rm -f "$WORK/portico.pid"
echo "load after: $(uptime)"
