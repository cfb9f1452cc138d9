#!/usr/bin/env bash
# Region service benchmark. Run from the repository root, one benchmark at a time:
#
#   flock /tmp/portico-bench.lock bash bench/region/run.sh
#
# 1. builds release binaries;
# 2. generates a regionData.cfg with 1,000 regions, 100,000 IPv4 and 20,000 IPv6 prefixes;
# 3. start-up: best-of-5 load time (read + parse + build) and RSS of that alone, then the
#    server's own load time (its log) and its RSS once serving and after the load;
# 4. wrk over HTTPS keep-alive (HTTP/1.1, loopback only): /healthz, /regionInfo by client IP,
#    /regionInfo by hint; ratio of each to /healthz;
# 5. reload under load: wrk on /regionInfo while the data file is replaced and SIGHUP sent
#    RELOADS times; any non-200 or socket error is a failure;
# then stops everything it started and prints a table.
#
# Environment: DURATION (s, default 10), CONNECTIONS (default 64), THREADS (default 2),
# RELOADS (default 10), LOG_REQUESTS ([region] log_requests, default true),
# CARGO_TARGET_DIR (default ./target).
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
RELOADS=${RELOADS:-10}
LOG_REQUESTS=${LOG_REQUESTS:-true}
TARGET=${CARGO_TARGET_DIR:-target}

for tool in wrk cargo; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/portico-region-bench.XXXXXX)
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== load before the run: $(uptime)"
LOAD_BEFORE=$(awk '{print $1", "$2", "$3}' /proc/loadavg)

echo "== building (release)"
# The region server is built with the system allocator: less resident memory (the 50 MB
# target) for ~5% fewer requests/s than mimalloc (see bench/RESULTS.md).
cargo build --release -q -p portico --no-default-features
cargo build --release -q -p region --examples
BIN="$TARGET/release/portico"
GEN="$TARGET/release/examples/gen_region_data"
LOADER="$TARGET/release/examples/load_region_data"

echo "== generating region data"
"$GEN" "$WORK/regionData.cfg" 1000 100000 20000
cp "$WORK/regionData.cfg" "$WORK/variant-a.cfg"
sed 's/^smt-fingerprint = /smt-fingerprint = B:/' "$WORK/regionData.cfg" > "$WORK/variant-b.cfg"
DATA_BYTES=$(stat -c %s "$WORK/regionData.cfg")

echo "== start-up alone (best of 5)"
LOADED=$("$LOADER" "$WORK/regionData.cfg" 5)
echo "$LOADED"
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
LOAD_MS=$(field load_ms_best "$LOADED")
LOAD_RSS_KIB=$(field rss_after_kib "$LOADED")

echo "== starting portico"
cat > "$WORK/portico.toml" <<EOF
data_dir = "$WORK/data"
allow_root = true

[log]
dir = "$WORK/logs"
level = "info"

[[listener]]
addr = "127.0.0.1:0"
tls = { self_signed = true }
services = ["region"]

[region]
data = "$WORK/regionData.cfg"
watch_interval_secs = 0
log_requests = $LOG_REQUESTS
EOF
START_NS=$(date +%s%N)
"$BIN" serve --config "$WORK/portico.toml" > "$WORK/stdout" 2> "$WORK/stderr" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    grep -q "portico: ready" "$WORK/stdout" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/stdout" "$WORK/stderr"; exit 1; }
    sleep 0.02
done
grep -q "portico: ready" "$WORK/stdout" || { echo "portico did not start" >&2; exit 1; }
READY_MS=$(( ($(date +%s%N) - START_NS) / 1000000 ))
URL=$(sed -n 's/^portico: listening on \(https:[^ ]*\).*/\1/p' "$WORK/stdout" | head -1)
SERVER_LOAD_MS=$(sed -n 's/.*region data loaded.* load_ms=\([0-9.]*\).*/\1/p' "$WORK/logs/app.log" | head -1)
rss_kib() { awk "/^$1:/ {print \$2}" "/proc/$SERVER_PID/status"; }
RSS_IDLE_KIB=$(rss_kib VmRSS)
echo "listening on $URL; ready after ${READY_MS} ms; region data loaded in ${SERVER_LOAD_MS} ms; RSS ${RSS_IDLE_KIB} KiB"

# One wrk run: prints requests/s and the number of failed requests (non-2xx + socket errors).
run_wrk() {
    local name=$1 path=$2 duration=$3
    local out="$WORK/wrk-$name.txt"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${duration}s" --latency "$URL$path" > "$out"
    local rps non2xx sock p50 p99
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
    sock=$(awk '/Socket errors:/ {gsub(",", ""); print $4+$6+$8+$10}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    echo "$name ${rps:-0} $(( ${non2xx:-0} + ${sock:-0} )) ${p50:-?} ${p99:-?}"
}

echo "== wrk: ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION}s each (warm-up 2s first)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$URL/regionInfo" > /dev/null
HEALTHZ=$(run_wrk healthz /healthz "$DURATION")
BY_IP=$(run_wrk by-ip /regionInfo "$DURATION")
BY_HINT=$(run_wrk by-hint "/regionInfo?regionHint=region-0500" "$DURATION")
RSS_LOADED_KIB=$(rss_kib VmRSS)
RSS_PEAK_KIB=$(rss_kib VmHWM)
echo "$HEALTHZ"; echo "$BY_IP"; echo "$BY_HINT"

echo "== reload under load: ${RELOADS} SIGHUPs during ${DURATION}s of wrk on /regionInfo"
# app.log rotates under load (100 MB): count over the rotated files too.
app_logs() { cat "$WORK"/logs/app.log*; }
RELOADS_BEFORE=$(app_logs | grep -c "region data reloaded" || true)
run_wrk reload /regionInfo "$DURATION" > "$WORK/reload.result" &
WRK_PID=$!
sleep 1
for i in $(seq 1 "$RELOADS"); do
    if (( i % 2 )); then src=variant-b.cfg; else src=variant-a.cfg; fi
    cp "$WORK/$src" "$WORK/regionData.cfg.new"
    mv "$WORK/regionData.cfg.new" "$WORK/regionData.cfg"
    kill -HUP "$SERVER_PID"
    sleep "$(awk "BEGIN {print ($DURATION - 2) / $RELOADS}")"
done
wait "$WRK_PID"
RELOAD=$(cat "$WORK/reload.result")
echo "$RELOAD"
# The log writer may still be draining the access log: wait (bounded) for the reload lines.
reloads_logged() { echo $(( $(app_logs | grep -c "region data reloaded" || true) - RELOADS_BEFORE )); }
for _ in $(seq 1 100); do (( $(reloads_logged) >= RELOADS )) && break; sleep 0.1; done
RELOADS_DONE=$(reloads_logged)
RELOAD_MS=$(app_logs | sed -n 's/.*region data reloaded.* load_ms=\([0-9.]*\).*/\1/p' | sort -n | tail -1)
RSS_AFTER_RELOADS_KIB=$(rss_kib VmRSS)

rps() { awk '{print $2}' <<<"$1"; }
failed() { awk '{print $3}' <<<"$1"; }
lat() { awk '{print $4" / "$5}' <<<"$1"; }
ratio() { awk "BEGIN {printf \"%.0f%%\", 100 * $(rps "$1") / $(rps "$HEALTHZ")}"; }
mib() { awk "BEGIN {printf \"%.1f MiB\", $1 / 1024}"; }

cat <<EOF

## Region benchmark ($(date -u +%Y-%m-%dT%H:%MZ), load average before: $LOAD_BEFORE, $(nproc) cores)

Data: 1,000 regions, 100,000 IPv4 + 20,000 IPv6 prefixes, $(( DATA_BYTES / 1024 )) KiB.

| measure | result | target |
|---|---|---|
| load (read + parse + build), best of 5, alone | ${LOAD_MS} ms | < 300 ms |
| RSS of a process holding only the data | $(mib "$LOAD_RSS_KIB") | |
| server: region data load (its log) | ${SERVER_LOAD_MS} ms | < 300 ms |
| server: exec to ready | ${READY_MS} ms | |
| server RSS when ready / after load runs / peak | $(mib "$RSS_IDLE_KIB") / $(mib "$RSS_LOADED_KIB") / $(mib "$RSS_PEAK_KIB") | < 50 MB |
| server RSS after ${RELOADS_DONE} reloads | $(mib "$RSS_AFTER_RELOADS_KIB") | |

Logs to files at level info, access log on, \`[region] log_requests = $LOG_REQUESTS\`.
wrk over HTTPS keep-alive (HTTP/1.1), ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} s, client and server on the same $(nproc) cores:

| endpoint | requests/s | vs /healthz | failed | latency p50 / p99 |
|---|---|---|---|---|
| /healthz | $(rps "$HEALTHZ") | 100% | $(failed "$HEALTHZ") | $(lat "$HEALTHZ") |
| /regionInfo by client IP | $(rps "$BY_IP") | $(ratio "$BY_IP") | $(failed "$BY_IP") | $(lat "$BY_IP") |
| /regionInfo?regionHint= | $(rps "$BY_HINT") | $(ratio "$BY_HINT") | $(failed "$BY_HINT") | $(lat "$BY_HINT") |
| /regionInfo during ${RELOADS_DONE} reloads | $(rps "$RELOAD") | $(ratio "$RELOAD") | $(failed "$RELOAD") | $(lat "$RELOAD") |

Slowest reload (parse + build + swap, from the log): ${RELOAD_MS} ms.
EOF
