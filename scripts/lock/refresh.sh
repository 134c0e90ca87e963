#!/usr/bin/env bash
# Refresh scripts/lock/requirements.lock: resolve deepiot with every extra (dev, launchers, ray) against the
# newest releases on the package index, with torch pinned to the CPU build setup.sh installs, and write the
# exact versions as a pip constraints file. torch itself is left out of the lock: setup.sh installs
# torch==2.13.0 only where no torch is present and leaves an existing one alone.
# Then run `bash scripts/test.sh` in a fresh virtual environment before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
report=$(mktemp)
$PY -m pip install --quiet --dry-run --ignore-installed --report "$report" "torch==2.13.0" -e ".[dev,launchers,ray]"
$PY - "$report" <<'PY' > scripts/lock/requirements.lock
import json, sys
from datetime import date
packages = json.load(open(sys.argv[1]))["install"]
skip = {"deepiot", "torch"}
print("# pip constraints: the versions CI tested (scripts/setup.sh installs with -c this file).")
print(f"# Refreshed {date.today()} by: bash scripts/lock/refresh.sh  (deepiot with extras dev, launchers, ray)")
for name, version in sorted((p["metadata"]["name"], p["metadata"]["version"]) for p in packages):
    if name.lower() not in skip:
        print(f"{name}=={version}")
PY
rm -f "$report"
echo "[lock] wrote scripts/lock/requirements.lock ($(grep -vc '^#' scripts/lock/requirements.lock) packages)"
