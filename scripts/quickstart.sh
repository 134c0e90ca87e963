#!/usr/bin/env bash
# The README's main job on a fresh machine: set up, then run the whole DeepIoT pipeline on the built-in
# default (LeNet-5 on the bundled MNIST): train the original (or reuse it), compress with the
# compressor-critic, fine-tune, slice, export (TorchScript + ONNX + slicing plan + manifest) and report.
# Extra arguments are Hydra overrides for deepiot-compress, e.g. `experiment=deepsense_hapt_activity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
deepiot-compress "$@"
