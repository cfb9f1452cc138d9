#!/usr/bin/env bash
# Jobs benchmark, side by side in one run: a release `portico serve` (embedded broker) and
# Celery 5 + RabbitMQ (127.0.0.1:5672 guest/guest; results in Redis 127.0.0.1:6379), same
# worker concurrency, a no-op task. Measures:
#   1. submissions acknowledged per second (durable: Portico answers 200 once the job is
#      fsync'd; Celery with publisher confirms and persistent messages), 10 s; Portico with
#      no local slot (as Celery's side, with no worker consuming) and with its slots running;
#   2. no-op jobs completed per second end to end (N jobs submitted, by wrk to Portico, time
#      until the last result is stored): Portico with `persistent` and `per_job` workers,
#      Celery with its prefork worker, publishing with confirms and (Celery's default)
#      without;
#   3. submit-to-result latency p50/p99 of single jobs in sequence.
# Celery comes from PyPI into a venv this script makes (kept in $VENV). Everything else runs
# on 127.0.0.1 on free ports in a temp dir and is stopped at the end. One command:
#   flock /tmp/portico-bench.lock bash bench/jobs/run.sh
# Env: CONCURRENCY (worker processes/slots, default: cores), DURATION (10s), JOBS (20000,
#      Celery's end-to-end count),
#      LATENCY_JOBS (200), CONNECTIONS (64), VENV (/tmp/portico-bench-celery-venv),
#      PORTICO (a release binary to measure instead of building one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
concurrency=${CONCURRENCY:-$(nproc)}
duration=${DURATION:-10s}
jobs=${JOBS:-20000}
latency_jobs=${LATENCY_JOBS:-200}
connections=${CONNECTIONS:-64}
venv=${VENV:-/tmp/portico-bench-celery-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for tool in wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { echo "RabbitMQ is not on 127.0.0.1:5672" >&2; exit 1; }
(exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null || { echo "Redis is not on 127.0.0.1:6379" >&2; exit 1; }

if [ ! -x "$venv/bin/celery" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "celery[redis]>=5,<6" requests
fi
py="$venv/bin/python"

echo "load before the run: $(uptime)"
echo "concurrency $concurrency, $jobs jobs end to end, $latency_jobs for latency"
# bench/lib.sh: free_port, build_release and PORTICO (a release build of this checkout unless
# set).
. "$here/../lib.sh"
build_release
portico=$PORTICO

work=$(mktemp -d /tmp/portico-bench-jobs.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT


results="$work/results.tsv"
: >"$results"
record() { printf '%s\t%s\n' "$1" "$2" | tee -a "$results"; }

# The no-op persistent worker: one JSON line in, one out.
cat >"$work/noop_worker.py" <<'PY'
import json, sys
for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["id"], "result": None}), flush=True)
PY

# start_portico MODE -> sets port, portico_pid (plain HTTP; security on, as users run it)
start_portico() {
  local mode=$1 command
  port=$(free_port)
  if [ "$mode" = persistent ]; then
    command="[\"python3\", \"$work/noop_worker.py\"]"
  else
    command='["sh", "-c", "cat >/dev/null; echo null"]'
  fi
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
mode = "$mode"
workers = ${slots:-$concurrency}
command = $command
TOML
  "$portico" serve --config "$work/portico.toml" >"$work/portico.out" 2>"$work/portico.err" &
  portico_pid=$!
  pids+=("$portico_pid")
  for _ in $(seq 200); do grep -q "ready" "$work/portico.out" 2>/dev/null && break; sleep 0.05; done
  token=$("$portico" token --config "$work/portico.toml")
}

stop_portico() {
  kill "$portico_pid" 2>/dev/null || true
  wait "$portico_pid" 2>/dev/null || true
}

# --- 1. submissions acknowledged per second -------------------------------------------
# Twice: with no local slot (`workers = 0`: the jobs wait for remote workers, as Celery's
# messages wait in RabbitMQ with no worker consuming them below), and with the service's
# slots running every job as it arrives (the server, its workers and wrk share the cores).
cat >"$work/submit.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "TOKEN"
wrk.body = "n=1"
LUA
for slots in 0 "$concurrency"; do
  label=portico_submit_per_s; [ "$slots" = 0 ] || label=portico_submit_running_per_s
  start_portico persistent
  sed "s|TOKEN|$token|" "$work/submit.lua" >"$work/submit_token.lua"
  wrk -t 2 -c "$connections" -d "$duration" -s "$work/submit_token.lua" "http://127.0.0.1:$port/noop/annotate" \
    >"$work/wrk-submit.txt"
  rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-submit.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk-submit.txt")
  record "$label" "$rate"
  [ -n "$non2xx" ] && record "${label}_non_2xx" "$non2xx"
  stop_portico
done
unset slots

queue="bench_$$"
cat >"$work/bench_tasks.py" <<PY
import os
from celery import Celery
app = Celery("bench", broker="amqp://guest:guest@127.0.0.1:5672//",
             backend="redis://127.0.0.1:6379/0")
app.conf.update(task_default_queue="$queue", result_expires=600,
                broker_transport_options={"confirm_publish": os.environ.get("CONFIRM", "1") == "1"},
                worker_prefetch_multiplier=4, task_acks_late=False)
@app.task
def noop(message):
    return None
PY

"$py" - "$work" "$concurrency" "${duration%s}" <<'PY' | while read -r key value; do record "$key" "$value"; done
import multiprocessing, sys, time
sys.path.insert(0, sys.argv[1])
concurrency, seconds = int(sys.argv[2]), float(sys.argv[3])
def produce(out):
    from bench_tasks import noop
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        noop.apply_async(({"service": {}},))
        count += 1
    out.put(count)
if __name__ == "__main__":
    out = multiprocessing.Queue()
    producers = [multiprocessing.Process(target=produce, args=(out,)) for _ in range(concurrency * 2)]
    for p in producers: p.start()
    total = sum(out.get() for _ in producers)
    for p in producers: p.join()
    print("celery_submit_per_s", round(total / seconds, 1))
    from bench_tasks import app
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)
PY

# --- 2. no-op jobs completed per second end to end, 3. latency ------------------------
# Submitted by wrk for DURATION at full rate (the client's own cost stays small, so the cores
# go to the server and its workers), then the time until the queue is empty and no slot is
# busy: jobs/s = jobs submitted / (submitting + draining). (wrk cannot stop after N requests:
# its main thread sleeps for the whole duration.)
cat >"$work/portico_drain.py" <<'PY'
import http.client, json, sys, time
port, started = int(sys.argv[1]), float(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
while True:
    c.request("GET", "/jobs/capacity"); caps = json.loads(c.getresponse().read())["services"]
    s = [x for x in caps if x["service"] == "noop"][0]
    if s["queue_depth"] == 0 and s["workers_busy"] == 0:
        break
    time.sleep(0.01)
print(time.time() - started)
PY
cat >"$work/portico_latency.py" <<'PY'
import http.client, json, statistics, sys, time
port, token, latency_jobs, label = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def conn():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c, lat = conn(), []
for _ in range(latency_jobs):
    t0 = time.monotonic()
    c.request("POST", "/jobs/noop", body="{}", headers={"Authorization": "Bearer " + token,
              "Content-Type": "application/json"})
    r = c.getresponse(); job = json.loads(r.read())
    e = conn(); e.request("GET", "/jobs/%s/events" % job["id"]); er = e.getresponse(); er.read(); e.close()
    lat.append(time.monotonic() - t0)
lat.sort()
print(f"portico_{label}_latency_p50_ms", round(statistics.median(lat) * 1000, 2))
print(f"portico_{label}_latency_p99_ms", round(lat[int(len(lat) * 0.99) - 1] * 1000, 2))
PY

for mode in persistent per_job; do
  start_portico "$mode"
  sed "s|TOKEN|$token|" "$work/submit.lua" >"$work/submit_token.lua"
  started=$(date +%s.%N)
  wrk -t 2 -c "$connections" -d "$duration" -s "$work/submit_token.lua" \
    "http://127.0.0.1:$port/noop/annotate" >"$work/wrk-e2e-$mode.txt"
  submitted=$(awk '/requests in/ {print $1}' "$work/wrk-e2e-$mode.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk-e2e-$mode.txt")
  [ -n "$non2xx" ] && record "portico_${mode}_non_2xx" "$non2xx"
  elapsed=$(python3 "$work/portico_drain.py" "$port" "$started")
  record "portico_${mode}_jobs" "$submitted"
  record "portico_${mode}_jobs_per_s" "$(python3 -c "print(round($submitted / $elapsed, 1))")"
  python3 "$work/portico_latency.py" "$port" "$token" "$latency_jobs" "$mode" \
    | while read -r key value; do record "$key" "$value"; done
  stop_portico
done

# exec: the pid cleanup kills is the worker's own (its prefork children follow it).
(cd "$work" && exec "$venv/bin/celery" -A bench_tasks worker -Q "$queue" -c "$concurrency" -P prefork \
  --without-gossip --without-mingle --without-heartbeat -l warning >"$work/celery.log" 2>&1) &
pids+=($!)
sleep 3
# With publisher confirms (durable, as Portico's 200) and without (Celery's default).
for confirm in 1 0; do
CONFIRM=$confirm "$py" - "$work" "$jobs" "$latency_jobs" "$confirm" <<'PY' | while read -r key value; do record "$key" "$value"; done
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
from bench_tasks import noop, app
jobs, latency_jobs = int(sys.argv[2]), int(sys.argv[3])
label = "celery" if sys.argv[4] == "1" else "celery_noconfirm"
start = time.monotonic()
results = [noop.apply_async(({"service": {}},)) for _ in range(jobs)]
for r in results:
    r.get(timeout=600)
elapsed = time.monotonic() - start
print(label + "_jobs_per_s", round(jobs / elapsed, 1))
lat = []
for _ in range(latency_jobs):
    t0 = time.monotonic(); noop.apply_async(({"service": {}},)).get(timeout=60); lat.append(time.monotonic() - t0)
lat.sort()
print(label + "_latency_p50_ms", round(statistics.median(lat) * 1000, 2))
print(label + "_latency_p99_ms", round(lat[int(len(lat) * 0.99) - 1] * 1000, 2))
PY
done
"$py" - "$work" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from bench_tasks import app
with app.connection_for_write() as conn:
    conn.default_channel.queue_delete(app.conf.task_default_queue)
PY

python3 - "$results" <<'PY'
import sys
r = dict(line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if "\t" in line)
f = lambda k: float(r[k]) if k in r else float("nan")
print("ratios:")
print("  submissions/s portico/celery: %.1fx" % (f("portico_submit_per_s") / f("celery_submit_per_s")))
print("  submissions/s with portico's slots running the jobs / celery: %.1fx" % (f("portico_submit_running_per_s") / f("celery_submit_per_s")))
print("  jobs/s persistent/celery:     %.1fx" % (f("portico_persistent_jobs_per_s") / f("celery_jobs_per_s")))
print("  jobs/s per_job/celery:        %.1fx" % (f("portico_per_job_jobs_per_s") / f("celery_jobs_per_s")))
print("  jobs/s persistent/celery without confirms: %.1fx" % (f("portico_persistent_jobs_per_s") / f("celery_noconfirm_jobs_per_s")))
PY
echo "load after the run: $(uptime)"
