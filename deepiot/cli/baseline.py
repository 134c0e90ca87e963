"""`deepiot-baseline`: compress a trained original with a baseline method (or DeepIoT) and the shared
fine-tuning recipe; the same artefacts as `deepiot-compress` (root config: configs/baseline.yaml).

Examples:
    deepiot-baseline                                             # LeNet-5/MNIST, magnitude, 2% of the params
    deepiot-baseline method=torch_pruning budget.fraction=0.035
    deepiot-baseline method=unstructured finetune.distill_weight=0.5
    deepiot-baseline -m method=magnitude,random budget.fraction=0.01,0.02
    deepiot-baseline budget.cost=model_kb budget.limit=32          # at most 32 KiB of fp32 weights
    deepiot-baseline budget.cost=latency_ms budget.limit=0.02 cost.profile=experiments/device/host_ort_1thread
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from deepiot.cli import CONFIG_DIR, checked_launcher, reported_errors


@checked_launcher("deepiot-baseline", "baseline")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="baseline")
def main(cfg: DictConfig) -> float:
    """Run, print a one-line summary, and return the compressed model's validation accuracy."""
    from deepiot.baselines.run import run_baseline

    with reported_errors("deepiot-baseline"):
        try:
            report = run_baseline(cfg)
        except ValueError as err:  # a budget a method cannot meet, a recurrent model for torch_pruning, ...
            print(f"deepiot-baseline: error: {err}", file=sys.stderr)
            raise SystemExit(2) from err
    left, accuracy = report["cost"]["left"], report["accuracy"]
    params = left.get("nonzero_params", left["params"])
    print(
        f"[deepiot-baseline] {cfg.name} {cfg.method.name}: params left {100 * params:.2f}%  "
        f"MACs left {100 * left['macs']:.2f}%  test accuracy {accuracy['original_test']:.4f} → "
        f"{accuracy['compressed_test']:.4f}  report {cfg.paths.output_dir}/report.md"
    )
    return accuracy["compressed_val"]


if __name__ == "__main__":
    main()
