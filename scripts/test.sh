#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's test command, also run by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check deepiot tests scripts
python3 -m pytest -m "not slow" -q "$@"
