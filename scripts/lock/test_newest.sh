#!/usr/bin/env bash
# Outside CI: run the test suite against the newest releases of every dependency (no lock), in a fresh
# virtual environment under ${VENV:-/tmp/deepiot-newest}. When it passes, `bash scripts/lock/refresh.sh`
# moves the lock forward.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-/tmp/deepiot-newest}
rm -rf "$VENV"
python3 -m venv "$VENV"
PYTHON="$VENV/bin/python" DEEPIOT_LOCK= PATH="$VENV/bin:$PATH" bash scripts/test.sh "$@"
