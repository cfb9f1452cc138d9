#!/usr/bin/env bash
# Makes the Python venv with Celery 5 (and redis) from PyPI that the AMQP benchmark uses:
# $VENV, default target/celery-venv. Kept once made (a marker file says the install
# finished). The interop tests make their own venvs (testkit::Venv), the same way.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-${CARGO_TARGET_DIR:-$root/target}/celery-venv}
[ -f "$venv/.portico-ready" ] && { echo "$venv"; exit 0; }
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "celery-venv.sh: $python is missing" >&2; exit 1; }
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "celery>=5.3,<6" "redis>=4"
touch "$venv/.portico-ready"
echo "$venv"
