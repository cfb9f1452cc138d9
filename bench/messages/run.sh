#!/usr/bin/env bash
# Messages benchmark: wrk over HTTPS keep-alive at 64 connections against a release
# `portico serve` (messages only), POST-only, GET-only and 90/10 GET/POST, for the embedded
# store and for Redis; then redis-benchmark -t set,get -c 64 on the same Redis as the store's
# own ceiling. Everything runs on 127.0.0.1, on free ports, in a temp dir, and is stopped at
# the end. Run it under the shared lock:
#   flock /tmp/portico-bench.lock bash bench/messages/run.sh
# Env: DURATION (default 10s), CONNECTIONS (64), THREADS (2), ACCESS_LOG (true).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
duration=${DURATION:-10s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
access_log=${ACCESS_LOG:-true}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

for tool in wrk redis-server redis-benchmark redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

echo "load before the run: $(uptime)"
(cd "$root" && cargo build --release -p portico >/dev/null)
portico="$CARGO_TARGET_DIR/release/portico"

work=$(mktemp -d /tmp/portico-bench-messages.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Digests of the preloaded messages, for the GET scripts.
python3 - "$work/digests.lua" <<'PY'
import hashlib, sys
with open(sys.argv[1], "w") as out:
    out.write("return {\n")
    for i in range(1000):
        out.write('  "%s",\n' % hashlib.sha256(("bench-%d" % i).encode()).hexdigest())
    out.write("}\n")
PY
export DIGESTS="$work/digests.lua"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

results="$work/results.tsv"
: >"$results"

# start_portico STORE -> sets port, admin_port, cert, portico_pid
start_portico() {
  local store=$1 dir="$work/portico-$1"
  mkdir -p "$dir"
  port=$(free_port)
  admin_port=$(free_port)
  cat >"$dir/portico.toml" <<TOML
data_dir = "$dir/data"
allow_root = true

[log]
dir = "$dir/logs"
level = "warn"
access_log = $access_log

[[listener]]
addr = "127.0.0.1:$port"
tls = { self_signed = true }
services = ["messages"]

[[listener]]
addr = "127.0.0.1:$admin_port"
services = ["admin"]

[messages]
store = "$store"
TOML
  "$portico" serve --config "$dir/portico.toml" >"$dir/stdout" 2>"$dir/stderr" &
  portico_pid=$!
  pids+=("$portico_pid")
  for _ in $(seq 300); do grep -qs "portico: ready" "$dir/stdout" && break; sleep 0.05; done
  grep -q "portico: ready" "$dir/stdout" || { cat "$dir/stdout" "$dir/stderr" >&2; exit 1; }
  cert=$(sed -n 's/^portico: clients should trust //p' "$dir/stdout")
}

# run_wrk LABEL WORKLOAD SCRIPT [PATH]: SCRIPT "-" means plain GET of PATH.
run_wrk() {
  local label=$1 workload=$2 script=$3 path=${4:-} out="$work/wrk-$1-${3%.lua}.txt"
  local args=()
  [ "$script" != "-" ] && args=(-s "$here/$script")
  (cd "$work" && wrk -t"$threads" -c"$connections" -d"$duration" --latency \
    "${args[@]}" "https://127.0.0.1:$port$path") >"$out"
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$workload" "$rps" "$p50" "$p99" "${errors:-0}" >>"$results"
}

batch_size() {
  curl -s "http://127.0.0.1:$admin_port/metrics" |
    awk '/^portico_messages_commit_batch_size_sum/ {s=$2} /^portico_messages_commit_batch_size_count/ {c=$2}
         END { if (c > 0) printf "%.1f puts per commit over %d commits", s/c, c; else print "n/a" }'
}

bench_store() {
  local label=$1 store=$2
  start_portico "$store"
  (cd "$work" && wrk -t1 -c8 -d2s -s "$here/preload.lua" "https://127.0.0.1:$port" >/dev/null)
  local probe
  probe=$(curl -s --cacert "$cert" "https://localhost:$port/messages/$(sed -n 2p "$DIGESTS" | tr -d ' ",')" \
    --resolve "localhost:$port:127.0.0.1")
  echo "$label: preloaded, probe answer: $(echo "$probe" | tr -d '\n ')"
  # The same listener's trivial /healthz: what TLS + the gateway cost without the service.
  [ "$label" = embedded ] && run_wrk "gateway" "GET /healthz (ceiling)" - /healthz
  run_wrk "$label" "POST" post.lua
  [ "$label" = embedded ] && echo "embedded group commit: $(batch_size)"
  run_wrk "$label" "GET" get.lua
  run_wrk "$label" "90/10 GET/POST" mix.lua
  kill "$portico_pid"; wait "$portico_pid" 2>/dev/null || true
}

bench_store embedded embedded
bench_store redis "redis://127.0.0.1:$redis_port/0"

redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set,get -c "$connections" -n 500000 -q \
  >"$work/redis-benchmark.txt" 2>&1
tr '\r' '\n' <"$work/redis-benchmark.txt" | awk -F'[: ]+' '/requests per second/ {
  printf "redis-benchmark\t%s\t%s\t-\t-\t-\n", $1, $2 }' >>"$results"

echo "load after the run: $(uptime)"
echo
echo "| store | workload | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---:|---:|---:|---:|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$results"
echo
redis_get=$(awk -F'\t' '$1 == "redis-benchmark" && $2 == "GET" {print $3}' "$results")
portico_get=$(awk -F'\t' '$1 == "redis" && $2 == "GET" {print $3}' "$results")
python3 -c "print('Redis store GET / redis-benchmark GET = %.0f%%' % (100 * float('$portico_get') / float('$redis_get')))"
