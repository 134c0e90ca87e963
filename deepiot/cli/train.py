"""`deepiot-train`: train an original model with the Hydra configs in configs/ (root config: config.yaml).

Examples:
    deepiot-train                                   # LeNet-5 on MNIST → outputs/train/lenet5_mnist/model.pt
    deepiot-train experiment=deepsense_hapt_activity
    deepiot-train -m experiment=lenet5_mnist,lenet300_mnist

`ensure_trained(cfg)`: the other commands' way to the original, trained here by `deepiot.train.train` when its
run folder (paths.original_dir) has none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from deepiot.checkpoint import load_checkpoint
from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.train import RESULT_GROUPS, resolve_groups, result_config, train
from deepiot.utils import ConfigError, describe_differences, exclusive_lock

log = logging.getLogger(__name__)


def ensure_trained(cfg: DictConfig) -> Path:
    """Path of the trained original for `cfg` (its data, model, trainer, seed), training it first if missing.

    The original lives in deepiot-train's run folder `cfg.paths.original_dir` (default outputs/train/<name>)
    as model.pt. A missing one is trained there (resuming a partial run); an existing one trained with a
    different data/model/trainer/seed config raises ConfigError instead of being silently reused. Parallel
    jobs (a joblib sweep) that need the same original wait while one of them trains it.
    """
    model_path = Path(cfg.paths.original_dir) / "model.pt"
    if model_path.is_file():
        return _ensure_trained(cfg)
    with exclusive_lock(model_path.parent / ".lock"):  # only a run that trains writes into the folder
        return _ensure_trained(cfg)


def trained_original(cfg: DictConfig) -> Path | None:
    """Path of the original in `cfg.paths.original_dir` when it is there and was trained with `cfg`'s data,
    model, trainer and seed; None when there is none; ConfigError when it was trained with another config
    (another data split, fold, epochs, ...), which must never be reused silently."""
    model_path = Path(cfg.paths.original_dir) / "model.pt"
    if not model_path.is_file():
        return None
    checkpoint = load_checkpoint(model_path, kind="trained_model")
    expected = result_config(resolve_groups(cfg, RESULT_GROUPS))
    if result_config(checkpoint["config"]) != expected:
        raise ConfigError(
            f"the trained original {model_path} was trained with another config "
            f"({describe_differences(result_config(checkpoint['config']), expected)}). Delete that folder to "
            "retrain it, or point paths.original_dir (deepiot-reproduce: runs_dir) at the run that matches this "
            "config."
        )
    return model_path


def _ensure_trained(cfg: DictConfig) -> Path:
    """`ensure_trained` (under its lock when it may train)."""
    run_dir = Path(cfg.paths.original_dir)
    model_path = trained_original(cfg)
    if model_path is not None:
        return model_path
    model_path = run_dir / "model.pt"
    train_cfg = cfg.copy()
    with open_dict(train_cfg):
        train_cfg.paths.output_dir = str(run_dir)
        train_cfg.paths.tensorboard_dir = str(run_dir / "tensorboard")
    log.info("no trained original at %s: training it now", model_path)
    train(train_cfg)
    return model_path


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
