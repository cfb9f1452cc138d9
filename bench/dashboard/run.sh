#!/usr/bin/env bash
# What open dashboards cost the job queue: the Portico half of bench/jobs (the same config:
# embedded broker, `persistent` no-op workers, security on; 1. submissions acknowledged per
# second with wrk, 2. no-op jobs completed per second end to end) with no page open and with
# CLIENTS pages open (`curl -N` on /dashboard/events: each gets the live event every second,
# as a browser tab would). Rounds alternate the order (without, with / with, without) on a
# fresh data directory each time; medians are reported with the ratio. The Celery half of
# bench/jobs is left out: dashboards run in the Portico process, not in Celery's.
#   flock /tmp/portico-bench.lock bash bench/dashboard/run.sh
# Env: CLIENTS (50), ROUNDS (3), DURATION (10, seconds of wrk), JOBS (10000), CONCURRENCY
#      (worker slots, default: cores), CONNECTIONS (64), PORTICO (binary; default: a release
#      build of this checkout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

clients=${CLIENTS:-50}
rounds=${ROUNDS:-3}
duration=${DURATION:-10}
jobs=${JOBS:-10000}
concurrency=${CONCURRENCY:-$(nproc)}
connections=${CONNECTIONS:-64}
for tool in wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
echo "load before the run: $(uptime)"
build_release

work=$(mktemp -d /tmp/portico-bench-dashboard.XXXXXX)
pids=()
sse=()
cleanup() {
  for pid in "${sse[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${sse[@]}" "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
results="$work/results.tsv"
: >"$results"

cat >"$work/noop_worker.py" <<'PY'
import json, sys
for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["id"], "result": None}), flush=True)
PY

start_portico() {
  port=$(free_port)
  rm -rf "$work/data"
  cat >"$work/portico.toml" <<TOML
data_dir = "$work/data"
allow_root = true
[log]
level = "warn"
[[listener]]
addr = "127.0.0.1:$port"
services = ["jobs", "admin"]
[jobs.security]
jwt_key = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXk="
[[jobs.service]]
name = "noop"
noparams = true
mode = "persistent"
workers = $concurrency
command = ["python3", "$work/noop_worker.py"]
TOML
  "$PORTICO" serve --config "$work/portico.toml" >"$work/portico.out" 2>"$work/portico.err" &
  portico_pid=$!
  pids+=("$portico_pid")
  for _ in $(seq 200); do grep -q "ready" "$work/portico.out" 2>/dev/null && break; sleep 0.05; done
  token=$("$PORTICO" token --config "$work/portico.toml")
}

stop_portico() {
  kill "$portico_pid" 2>/dev/null || true
  wait "$portico_pid" 2>/dev/null || true
}

open_dashboards() {
  sse=()
  for i in $(seq "$clients"); do
    curl -sN "http://127.0.0.1:$port/dashboard/events" >"$work/sse.$i" 2>/dev/null &
    sse+=($!)
  done
  # Every page has its first event before measuring.
  for i in $(seq "$clients"); do
    for _ in $(seq 100); do grep -q "event: tick" "$work/sse.$i" 2>/dev/null && break; sleep 0.05; done
  done
}

close_dashboards() {
  local events=0 bytes=0
  for pid in "${sse[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${sse[@]}"; do wait "$pid" 2>/dev/null || true; done
  for i in $(seq "$clients"); do
    events=$((events + $(grep -c "^event: tick" "$work/sse.$i" || true)))
    bytes=$((bytes + $(stat -c %s "$work/sse.$i")))
  done
  echo "    $clients pages got $events events, $((bytes / 1024)) KiB in all"
  sse=()
}

cat >"$work/submit.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "n=1"
LUA

cat >"$work/e2e.py" <<'PY'
import http.client, json, sys, threading, time
port, token, jobs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def conn():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def submit(c):
    c.request("POST", "/noop/annotate", body="n=1", headers={"Authorization": token,
              "Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
    return json.loads(body)["uuid"]
def drained(c):
    c.request("GET", "/jobs/capacity"); caps = json.loads(c.getresponse().read())["services"]
    s = [x for x in caps if x["service"] == "noop"][0]
    return s["queue_depth"] == 0 and s["workers_busy"] == 0
start = time.monotonic()
threads, per = [], jobs // 8
def loop():
    c = conn()
    for _ in range(per): submit(c)
for _ in range(8):
    t = threading.Thread(target=loop); t.start(); threads.append(t)
for t in threads: t.join()
c = conn()
last = submit(c)
while True:
    c.request("GET", "/jobs/" + last); state = json.loads(c.getresponse().read())["state"]
    if state == "SUCCESS" and drained(c): break
    time.sleep(0.01)
print(round((per * 8 + 1) / (time.monotonic() - start), 1))
PY

measure() { # label: one submission run and one end-to-end run on a fresh server
  local label=$1 rate e2e rss
  start_portico
  [ "$label" = with ] && open_dashboards
  wrk -t 2 -c "$connections" -d "${duration}s" -s "$work/submit.lua" \
    -H "Authorization: $token" "http://127.0.0.1:$port/noop/annotate" >"$work/wrk.txt"
  rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  e2e=$(python3 "$work/e2e.py" "$port" "$token" "$jobs")
  rss=$(ps -o rss= -p "$portico_pid" | tr -d ' ')
  printf '  %-8s submissions/s %10s   jobs/s end to end %8s   RSS %6s KiB\n' "$label" "$rate" "$e2e" "$rss"
  printf '%s\tsubmit\t%s\n%s\te2e\t%s\n%s\trss\t%s\n' "$label" "$rate" "$label" "$e2e" "$label" "$rss" >>"$results"
  [ "$label" = with ] && close_dashboards
  stop_portico
}

echo "concurrency $concurrency, $clients pages, $rounds rounds, wrk ${duration}s, $jobs jobs end to end"
for round in $(seq "$rounds"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then measure without; measure with; else measure with; measure without; fi
done

python3 - "$results" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
def med(label, metric):
    return statistics.median(float(v) for l, m, v in rows if l == label and m == metric)
for metric, name in (("submit", "submissions/s"), ("e2e", "jobs/s end to end"), ("rss", "RSS KiB")):
    a, b = med("without", metric), med("with", metric)
    print(f"median {name:18} without {a:10.1f}  with {b:10.1f}  with/without {b / a:.3f}")
PY
echo "load after the run: $(uptime)"
