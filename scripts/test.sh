#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's test command, also run by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! python3 -c "import ray, hydra_plugins.hydra_ray_launcher" 2>/dev/null; then
  # the [ray] extra, for the live-cluster tests (tests/test_cluster.py: a local Ray head on 127.0.0.1);
  # ~80 MB download, ~420 MB installed, so the quickstart's setup leaves it out
  LOCK=${DEEPIOT_LOCK-scripts/lock/requirements.lock}
  echo "[setup] installing the [ray] extra${LOCK:+, versions from $LOCK}"
  python3 -m pip install --quiet ${LOCK:+-c $LOCK} -e ".[ray]"
fi
if ! python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('executorch') and u.find_spec('torchao')))" 2>/dev/null; then
  # the [edge] extra (ExecuTorch export tests), pinned and --no-deps: its full dependency list pulls ~20 packages
  # (coremltools, pandas, scikit-learn, ...) that deepiot never imports; ~22 MB download, ~160 MB installed
  echo "[setup] installing ExecuTorch (the [edge] extra, --no-deps)"
  python3 -m pip install --quiet --no-deps executorch==1.5.1 torchao==0.18.0 ruamel.yaml==0.19.1 tabulate==0.10.0
fi
if ! command -v qemu-x86_64 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # lets tests/test_quantize.py run ONNX Runtime's int8 kernels as on an AVX2 CPU without VNNI (they skip without it)
  echo "[test] installing qemu-user (emulated-CPU int8 check)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } >/dev/null 2>&1 \
    || echo "[test] qemu-user could not be installed; the emulated-CPU int8 tests will skip"
fi
python3 -m ruff check deepiot tests scripts
python3 -m ruff format --check deepiot tests scripts
python3 -m pytest -m "not slow" -q "$@"
