#!/usr/bin/env bash
# The whole test suite: makes sure the servers the tests need are up, then `cargo test`.
# Redis: 127.0.0.1:6379 (or PORTICO_TEST_REDIS); started, or installed and started, when absent.
# RabbitMQ: 127.0.0.1:5672 guest/guest (or PORTICO_TEST_AMQP); the same. The Celery interop
# tests make their own Python venv (celery, redis from PyPI) with python3; with CI set, a
# missing RabbitMQ, Redis or Python fails those tests instead of skipping them.
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

rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_rabbitmq() {
  [ -n "${PORTICO_TEST_AMQP:-}" ] && return 0
  rabbitmq_up && return 0
  if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    echo "test.sh: installing rabbitmq-server" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
  fi
  echo "test.sh: starting rabbitmq-server on 127.0.0.1:5672" >&2
  as_root service rabbitmq-server start >/dev/null 2>&1 \
    || as_root /etc/init.d/rabbitmq-server start >/dev/null 2>&1 \
    || as_root rabbitmq-server -detached
  for _ in $(seq 120); do rabbitmq_up && return 0; sleep 0.5; done
  echo "test.sh: rabbitmq did not come up" >&2
  return 1
}

ensure_python() {
  command -v python3 >/dev/null && return 0
  echo "test.sh: installing python3 (the Celery interop tests make a venv with it)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
}

ensure_redis
ensure_rabbitmq
ensure_python
exec cargo test --workspace --locked "$@"
