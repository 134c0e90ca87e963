#!/usr/bin/env bash
# One-command check of deepiot on a CUDA machine (a GPU owner runs it; ~2-3 min):
#   bash scripts/gpu_check.sh
# 1. the `gpu` tests (quick pipeline end to end on CUDA, reproducibility and resume on the GPU, the env);
# 2. the device-parametrised tests, which then run on the CPU and on CUDA;
# 3. deepiot-compress with device=auto and tiny overrides (must pick CUDA), into a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch: nothing to check (the gpu tests skip)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, for the reproducibility test
python3 -m pytest -m gpu -q -rs tests/test_gpu.py
python3 -m pytest -q tests/test_device.py
run=$(mktemp -d)
python3 -m deepiot.cli.compress device=auto experiment=lenet300_mnist data.dataset.limit=512 trainer.epochs=1 \
    compress.max_iterations=40 compress.eval_every=20 finetune.steps=20 compress.latency_threads=null \
    "hydra.run.dir=$run/compress" "paths.original_dir=$run/train" | tee "$run/out.txt"
grep -q "params left" "$run/out.txt"
python3 - "$run" <<'PY'
import sys, torch
from deepiot.checkpoint import load_checkpoint
state = load_checkpoint(f"{sys.argv[1]}/compress/compress_state.pt")
assert state["device"] == "cuda", f"device=auto compressed on {state['device']}, expected cuda"
print("gpu_check: OK (device=auto compressed on cuda)")
PY
