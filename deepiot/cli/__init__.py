"""Thin Hydra command-line entry points (`deepiot-train`, ...) and the root config they share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

# The repository's configs/ folder (../../configs from this file), absolute: Hydra would read a relative
# config_path as a Python package when an entry point runs as an installed console script.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the root config with command-line style overrides, without running anything.

    For tests and notebooks (not inside a running `@hydra.main`). `paths.output_dir` refers to Hydra's run
    folder, so set it, e.g. `compose_config(["experiment=lenet300_mnist", "paths.output_dir=/tmp/run"])`.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
