"""`deepiot-train`: train an original model with the Hydra configs in configs/ (root config: config.yaml).

Examples:
    deepiot-train                                   # LeNet-5 on MNIST → outputs/train/lenet5_mnist/model.pt
    deepiot-train experiment=deepsense_hapt_activity
    deepiot-train -m experiment=lenet5_mnist,lenet300_mnist
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.train import train


@checked_command_line("deepiot-train", "config")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Train, print a one-line summary, and return the validation accuracy (the value a sweeper optimises)."""
    with reported_errors("deepiot-train"):
        metrics = train(cfg)
    print(
        f"[deepiot-train] {cfg.name}: test_accuracy {metrics['test_accuracy']:.4f}  "
        f"val_accuracy {metrics['val_accuracy']:.4f}  params {int(metrics['params'])}  "
        f"wall_time {metrics['wall_time_s']:.1f} s  model {cfg.paths.output_dir}/model.pt"
    )
    return metrics["val_accuracy"]


if __name__ == "__main__":
    main()
