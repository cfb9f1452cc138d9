#!/usr/bin/env bash
# Jobs over RabbitMQ (issue 11), side by side in one run, the same Celery workers for both:
#   1. submissions acknowledged per second: a release `portico serve` with
#      `broker = "amqp://..."` (200 only after RabbitMQ confirmed the persistent message)
#      under wrk, vs Python producers calling Celery's `apply_async` with publisher confirms;
#      nothing consumes meanwhile (the queue is purged after);
#   2. no-op jobs completed per second end to end (JOBS submitted, time until the last is
#      SUCCESS) and 3. submit-to-result latency p50/p99 (LATENCY_JOBS one after another):
#      through Portico (HTTP, states from the Redis result backend into Portico's records)
#      vs the Python client (`apply_async(...).get()`), both with one Celery 5 prefork worker
#      of CONCURRENCY processes and results in Redis;
#   4. the same end to end through Portico with `portico worker --broker` (persistent no-op
#      command, CONCURRENCY slots) in place of the Python worker;
#   and, after 1., RabbitMQ's own ceiling for the same task messages with as many confirms
#   in flight as wrk has connections, from a minimal Rust client (no HTTP, no records:
#   crates/jobs/examples/amqp_ceiling.rs), to read Portico's rate against.
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest), Redis on 127.0.0.1:6379, wrk (installed
# with apt when missing and root). Celery comes from PyPI into $VENV (scripts/celery-venv.sh).
#   flock /tmp/portico-bench.lock bash bench/jobs/amqp.sh
# Env: CONCURRENCY (default: cores), DURATION (10s), JOBS (5000), LATENCY_JOBS (100),
#      CONNECTIONS (64), VENV (target/celery-venv), RECORDS_DIR (where Portico's data
#      directory goes; default: the run's work directory under /tmp, on the same disk as
#      RabbitMQ's data here; /dev/shm stands in for a disk of its own).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
concurrency=${CONCURRENCY:-$(nproc)}
duration=${DURATION:-10s}
jobs=${JOBS:-5000}
latency_jobs=${LATENCY_JOBS:-100}
connections=${CONNECTIONS:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
venv=${VENV:-$CARGO_TARGET_DIR/celery-venv}
amqp="amqp://guest:guest@127.0.0.1:5672/%2f"
redis="redis://127.0.0.1:6379/0"

if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for tool in wrk python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
(exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || { echo "RabbitMQ is not on 127.0.0.1:5672" >&2; exit 1; }
(exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null || { echo "Redis is not on 127.0.0.1:6379" >&2; exit 1; }
VENV=$venv bash "$root/scripts/celery-venv.sh" >/dev/null
py="$venv/bin/python"

echo "load before the run: $(uptime)"
echo "concurrency $concurrency, $jobs jobs end to end, $latency_jobs for latency"
# bench/lib.sh: free_port, build_release and PORTICO (a release build of this checkout unless
# set).
. "$here/../lib.sh"
build_release
portico=$PORTICO

work=$(mktemp -d /tmp/portico-bench-amqp.XXXXXX)
queue="bench_amqp_$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  (cd "$work" && "$py" bench_tasks.py x purge delete >/dev/null 2>&1) || true
  rm -rf "$work" "${records_dir:-$work}/portico-data-$$"
}
trap cleanup EXIT

results="$work/results.tsv"
: >"$results"
record() { printf '%s\t%s\n' "$1" "$2" | tee -a "$results"; }

cat >"$work/bench_tasks.py" <<PY
import os, sys
from celery import Celery
app = Celery("worker", broker="amqp://guest:guest@127.0.0.1:5672//", backend="$redis")
app.conf.update(task_default_queue="$queue", result_expires=600,
                broker_transport_options={"confirm_publish": True},
                worker_prefetch_multiplier=4, task_acks_late=False)
@app.task(name="worker.noop")
def noop(message):
    return None
if __name__ == "__main__" and len(sys.argv) > 2:
    with app.connection_for_write() as conn:
        for what in sys.argv[2:]:
            getattr(conn.default_channel, "queue_" + what)("$queue")
PY
purge() { (cd "$work" && "$py" bench_tasks.py x purge >/dev/null 2>&1 || true); }

records_dir=${RECORDS_DIR:-$work}
start_portico() {
  port=$(free_port)
  rm -rf "$records_dir/portico-data-$$"
  cat >"$work/portico.toml" <<TOML
data_dir = "$records_dir/portico-data-$$"
allow_root = true
[log]
level = "warn"
[[listener]]
addr = "127.0.0.1:$port"
services = ["jobs", "admin"]
[jobs]
broker = "$amqp"
result_backend = "$redis"
celery_app = "worker"
[jobs.security]
jwt_key = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXk="
[[jobs.service]]
name = "noop"
celery_task_name = "noop"
celery_queue_name = "$queue"
noparams = true
TOML
  "$portico" serve --config "$work/portico.toml" >"$work/portico.out" 2>"$work/portico.err" &
  portico_pid=$!
  pids+=("$portico_pid")
  for _ in $(seq 200); do grep -q "ready" "$work/portico.out" 2>/dev/null && break; sleep 0.05; done
  token=$("$portico" token --config "$work/portico.toml")
}
stop_portico() { kill "$portico_pid" 2>/dev/null || true; wait "$portico_pid" 2>/dev/null || true; }

# --- 1. submissions acknowledged per second (confirmed by RabbitMQ) --------------------
purge
start_portico
cat >"$work/submit.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "$token"
wrk.body = "n=1"
LUA
wrk -t 2 -c "$connections" -d "$duration" -s "$work/submit.lua" "http://127.0.0.1:$port/noop/annotate" \
  >"$work/wrk-submit.txt"
record "portico_amqp_submit_per_s" "$(awk '/Requests\/sec/ {print $2}' "$work/wrk-submit.txt")"
non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk-submit.txt")
[ -n "$non2xx" ] && record "portico_amqp_submit_non_2xx" "$non2xx"
stop_portico
purge

# RabbitMQ's own ceiling for the same messages: no HTTP, no records, as many publishes in
# flight as wrk had connections (crates/jobs/examples/amqp_ceiling.rs).
cargo build --release -q -p jobs --example amqp_ceiling
ceiling=$("$CARGO_TARGET_DIR/release/examples/amqp_ceiling" "$amqp" "$connections" 4 "${duration%s}")
record "rabbitmq_ceiling_confirmed_per_s" "${ceiling#confirmed_per_s }"

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
    print("celery_client_submit_per_s", round(total / seconds, 1))
PY
purge

# --- 2./3. end to end and latency, the same Celery worker -----------------------------
cat >"$work/portico_e2e.py" <<'PY'
import http.client, json, statistics, sys, threading, time
port, token, jobs, latency_jobs, label = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def conn():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)
def submit(c):
    c.request("POST", "/noop/annotate", body="n=1", headers={"Authorization": token,
              "Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse(); body = r.read()
    assert r.status == 200, (r.status, body)
    return json.loads(body)["uuid"]
def state(c, uuid):
    c.request("GET", "/jobs/" + uuid); return json.loads(c.getresponse().read())["state"]
start = time.monotonic()
threads, per, ids = [], jobs // 8, []
def loop():
    c = conn()
    for _ in range(per): ids.append(submit(c))
for _ in range(8):
    t = threading.Thread(target=loop); t.start(); threads.append(t)
for t in threads: t.join()
c = conn()
for uuid in ids:
    while state(c, uuid) != "SUCCESS":
        time.sleep(0.005)
elapsed = time.monotonic() - start
print(f"{label}_jobs_per_s", round(len(ids) / elapsed, 1))
lat = []
for _ in range(latency_jobs):
    t0 = time.monotonic()
    c.request("POST", "/jobs/noop", body="{}", headers={"Authorization": "Bearer " + token,
              "Content-Type": "application/json"})
    job = json.loads(c.getresponse().read())
    e = conn(); e.request("GET", "/jobs/%s/events" % job["id"]); er = e.getresponse(); er.read(); e.close()
    lat.append(time.monotonic() - t0)
lat.sort()
print(f"{label}_latency_p50_ms", round(statistics.median(lat) * 1000, 2))
print(f"{label}_latency_p99_ms", round(lat[int(len(lat) * 0.99) - 1] * 1000, 2))
PY

(cd "$work" && exec "$venv/bin/celery" -A bench_tasks worker -Q "$queue" -c "$concurrency" -P prefork \
  --without-gossip -E -l warning >"$work/celery.log" 2>&1) &
celery_pid=$!
pids+=("$celery_pid")
sleep 4
start_portico
python3 "$work/portico_e2e.py" "$port" "$token" "$jobs" "$latency_jobs" "portico_celery_worker" \
  | while read -r key value; do record "$key" "$value"; done
stop_portico

"$py" - "$work" "$jobs" "$latency_jobs" <<'PY' | while read -r key value; do record "$key" "$value"; done
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
from bench_tasks import noop
jobs, latency_jobs = int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
results = [noop.apply_async(({"service": {}},)) for _ in range(jobs)]
for r in results:
    r.get(timeout=600)
print("celery_client_jobs_per_s", round(jobs / (time.monotonic() - start), 1))
lat = []
for _ in range(latency_jobs):
    t0 = time.monotonic(); noop.apply_async(({"service": {}},)).get(timeout=60); lat.append(time.monotonic() - t0)
lat.sort()
print("celery_client_latency_p50_ms", round(statistics.median(lat) * 1000, 2))
print("celery_client_latency_p99_ms", round(lat[int(len(lat) * 0.99) - 1] * 1000, 2))
PY
kill "$celery_pid" 2>/dev/null || true
wait "$celery_pid" 2>/dev/null || true
purge

# --- 4. portico worker in place of the Python worker ----------------------------------
cat >"$work/noop_worker.py" <<'PY'
import json, sys
for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["id"], "result": None}), flush=True)
PY
"$portico" worker --broker "$amqp" --queue "$queue" --result-backend "$redis" \
  --slots "$concurrency" --mode persistent -- python3 "$work/noop_worker.py" \
  >"$work/worker.out" 2>"$work/worker.err" &
worker_pid=$!
pids+=("$worker_pid")
sleep 3
start_portico
python3 "$work/portico_e2e.py" "$port" "$token" "$jobs" "$latency_jobs" "portico_portico_worker" \
  | while read -r key value; do record "$key" "$value"; done
stop_portico

python3 - "$results" <<'PY'
import sys
r = dict(line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if "\t" in line)
f = lambda k: float(r[k]) if k in r else float("nan")
print("ratios:")
print("  submissions/s portico/celery client: %.1fx" % (f("portico_amqp_submit_per_s") / f("celery_client_submit_per_s")))
print("  submissions/s portico/rabbitmq ceiling: %.2f" % (f("portico_amqp_submit_per_s") / f("rabbitmq_ceiling_confirmed_per_s")))
print("  jobs/s via portico/celery client (same worker): %.2fx" % (f("portico_celery_worker_jobs_per_s") / f("celery_client_jobs_per_s")))
print("  jobs/s portico worker/python worker (via portico): %.2fx" % (f("portico_portico_worker_jobs_per_s") / f("portico_celery_worker_jobs_per_s")))
PY
echo "load after the run: $(uptime)"
