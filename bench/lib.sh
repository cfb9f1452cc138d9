# Shared helpers of the benchmark scripts: free ports, waiting for a port, parsing wrk.
# Source it: . "$(dirname "$0")/../lib.sh"

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# PORTICO: the binary to measure (default: this checkout's release build, built first).
PORTICO=${PORTICO:-$ROOT/target/release/portico}

build_release() {
  [ "$PORTICO" = "$ROOT/target/release/portico" ] || return 0
  (cd "$ROOT" && cargo build --release -q -p portico)
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port [seconds]
  local deadline=$((SECONDS + ${2:-30}))
  until (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "port $1 did not open" >&2; return 1; }
    sleep 0.1
  done
}

# wrk_run LABEL URL [extra wrk args...]: prints "LABEL req/s p99" and appends to $RESULTS.
wrk_run() {
  local label=$1 url=$2; shift 2
  local out
  out=$(wrk --latency -t "${WRK_THREADS:-1}" -c "${WRK_CONNS:-64}" -d "${WRK_SECONDS:-10}s" "$@" "$url")
  local rps p99 errors
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr '\n' ' ' || true)
  printf '%-48s %12s req/s  p99 %-10s %s\n' "$label" "$rps" "$p99" "$errors" | tee -a "${RESULTS:-/dev/null}"
}
