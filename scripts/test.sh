#!/usr/bin/env bash
# The whole test suite: makes sure the servers the tests need are up, then `cargo test`.
# Redis: 127.0.0.1:6379 (or PORTICO_TEST_REDIS); started, or installed and started, when absent.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

ensure_redis() {
  [ -n "${PORTICO_TEST_REDIS:-}" ] && return 0
  redis_up && return 0
  if ! command -v redis-server >/dev/null; then
    echo "test.sh: installing redis-server" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
  fi
  echo "test.sh: starting redis-server on 127.0.0.1:6379" >&2
  mkdir -p /tmp/portico-test-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/portico-test-redis --logfile /tmp/portico-test-redis/redis.log
  for _ in $(seq 50); do redis_up && return 0; sleep 0.1; done
  echo "test.sh: redis did not come up" >&2
  return 1
}

ensure_redis
exec cargo test --workspace --locked "$@"
