#!/usr/bin/env bash
# Fib benchmark: wrk over plain HTTP keep-alive at the seed's settings (N=10 at 200
# connections, N=100 and N=1000 at 100), in process and through one local fib-backend, plus the
# time and server peak memory of one /fib/100000 download. Loopback only; every process it
# starts is stopped on exit. Run it under the shared lock:
#   flock /tmp/portico-bench.lock bash bench/fib/run.sh
# Env: DURATION (wrk seconds per run, default 10), THREADS (wrk threads, default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/portico"
WORK="$(mktemp -d /tmp/portico-fib-bench.XXXXXX)"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y $tool)" >&2; exit 1; }
done

echo "== load before the run: $(uptime)"
(cd "$ROOT" && cargo build --release -p portico >&2)

# wait_line FILE PATTERN: waits (at most 60 s) until FILE has a line matching PATTERN.
wait_line() {
    for _ in $(seq 1 600); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# start_portico NAME EXTRA_TOML: starts portico serve with one plain-HTTP listener on a free
# loopback port; sets URL and PID.
start_portico() {
    local name="$1" extra="$2"
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name/portico.toml" <<TOML
data_dir = "$WORK/$name/data"
allow_root = true

[log]
level = "warn"

[[listener]]
addr = "127.0.0.1:0"
services = ["fib"]

$extra
TOML
    "$BIN" serve --config "$WORK/$name/portico.toml" >"$WORK/$name/out" 2>"$WORK/$name/err" &
    PID=$!
    PIDS+=("$PID")
    wait_line "$WORK/$name/out" "portico: ready"
    URL="$(sed -n 's/^portico: listening on \(http:[^ ]*\).*/\1/p' "$WORK/$name/out" | head -1)"
}

# start_backend: starts portico fib-backend on a free loopback port; sets BACKEND.
start_backend() {
    mkdir -p "$WORK/backend"
    "$BIN" fib-backend --listen 127.0.0.1:0 >"$WORK/backend/out" 2>"$WORK/backend/err" &
    PIDS+=("$!")
    wait_line "$WORK/backend/out" "listening on"
    BACKEND="$(sed -n 's/^portico: fib-backend listening on //p' "$WORK/backend/out")"
}

ROWS=()
# run_wrk LABEL URL N CONNECTIONS
run_wrk() {
    local label="$1" url="$2" n="$3" conns="$4" out
    curl -fsS -o /dev/null "$url/fib/$n"   # warm the cache
    out="$(wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency "$url/fib/$n")"
    echo "$out" >&2
    local rps p99 errors
    rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
    p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
    errors="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')"
    ROWS+=("$(printf '| %-22s | %5s | %4s | %10s | %8s | %s |' "$label" "$n" "$conns" "$rps" "$p99" "${errors:-none}")")
}

start_portico inprocess ""
INPROC="$URL"
for spec in "10 200" "100 100" "1000 100"; do
    set -- $spec
    run_wrk "in process" "$INPROC" "$1" "$2"
done

start_backend
start_portico viabackend "[fib]
backends = [\"$BACKEND\"]
client_cache_bytes = 0"
VIA="$URL"
for spec in "10 200" "100 100" "1000 100"; do
    set -- $spec
    run_wrk "via 1 fib-backend" "$VIA" "$1" "$2"
done

# One /fib/100000 from a fresh server, so its VmHWM is this download's peak.
start_portico big ""
BIG_PID="$PID"
BIG="$(curl -fsS -o /dev/null -w '%{time_total} s, %{size_download} bytes, first byte after %{time_starttransfer} s' "$URL/fib/100000")"
HWM="$(awk '/VmHWM/ {print $2, $3}' "/proc/$BIG_PID/status")"
BIG2="$(curl -fsS -o /dev/null -w '%{time_total} s' "$URL/fib/100000")"
HWM2="$(awk '/VmHWM/ {print $2, $3}' "/proc/$BIG_PID/status")"

echo
echo "== fib benchmark ($(date -u +%FT%TZ), wrk -t$THREADS -d${DURATION}s, plain HTTP keep-alive)"
echo "| path                   |     N | conc |      req/s |  p99     | errors |"
echo "|------------------------|-------|------|------------|----------|--------|"
printf '%s\n' "${ROWS[@]}"
echo
echo "/fib/100000 (curl, fresh server): $BIG; server VmHWM $HWM"
echo "/fib/100000 again (cache warm): $BIG2; server VmHWM $HWM2"
echo "== load after the run: $(uptime)"
