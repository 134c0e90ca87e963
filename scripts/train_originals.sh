#!/usr/bin/env bash
# Train the five original models into outputs/train/<experiment>/model.pt, then write the results table,
# results.json and validation curves to experiments/originals/. Rerunning resumes interrupted runs and only
# re-tests finished ones. Extra arguments go to every deepiot-train call (e.g. progress_bar=false).
#   THREADS=2 bash scripts/train_originals.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
EXPERIMENTS=(lenet5_mnist lenet300_mnist deepsense_hapt_activity deepsense_hapt_user lstm_hapt_activity)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

for experiment in "${EXPERIMENTS[@]}"; do
  echo "[train_originals] $experiment"
  deepiot-train experiment="$experiment" num_threads="$THREADS" "$@"
done
python3 experiments/originals/summarize.py "${EXPERIMENTS[@]}" --commit "$COMMIT" --threads "$THREADS" \
  --command "THREADS=$THREADS bash scripts/train_originals.sh"
