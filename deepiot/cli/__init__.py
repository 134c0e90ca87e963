"""Thin Hydra command-line entry points (`deepiot-train`, ...) and the root config they share."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

# The repository's configs/ folder (../../configs from this file), absolute: Hydra would read a relative
# config_path as a Python package when an entry point runs as an installed console script.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Short model names for default run names (configs/model/<name>.yaml); other classes use their lowercased name.
MODEL_NAMES = {
    "LeNet5": "lenet5",
    "LeNet300": "lenet300",
    "VGG": "vgg",
    "LSTMClassifier": "lstm",
    "DeepSense": "deepsense",
}


def run_name(model_target: str, data_target: str) -> str:
    """Default run name "<model>_<data>" from the two `_target_`s, e.g. ("deepiot.models.LSTMClassifier",
    "deepiot.data.load_npz") → "lstm_npz"; the `name` key of config.yaml uses it unless an experiment sets one."""
    model = str(model_target).rsplit(".", 1)[-1]
    data = str(data_target).rsplit(".", 1)[-1].removeprefix("load_")
    return f"{MODEL_NAMES.get(model, model.lower())}_{data}"


OmegaConf.register_new_resolver("deepiot.run_name", run_name, replace=True)


def seed_suffix(seed: int | str) -> str:
    """ "" for seed 0, else "_seed<N>": run folders of other seeds sit beside the default one
    (outputs/train/lenet5_mnist, outputs/train/lenet5_mnist_seed1), so a sweep over seeds finds one original each."""
    return "" if int(seed) == 0 else f"_seed{int(seed)}"


OmegaConf.register_new_resolver("deepiot.seed_suffix", seed_suffix, replace=True)


def budget_amount(fraction: float | None, limit: float | None) -> str:
    """The budget's number in a run folder name: the limit (device units) when set, else the fraction."""
    return str(fraction if limit is None else limit)


OmegaConf.register_new_resolver("deepiot.budget_amount", budget_amount, replace=True)

# `${deepiot.cwd:}`: the folder the command runs in, where relative paths resolve (resolved by the driver of a
# sweep: configs/hydra/launcher/ray_cluster.yaml sends it to the Ray workers, which start elsewhere)
OmegaConf.register_new_resolver("deepiot.cwd", lambda: str(Path.cwd()), replace=True)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the root config with command-line style overrides, without running anything.

    For tests and notebooks (not inside a running `@hydra.main`). `paths.output_dir` refers to Hydra's run
    folder, so set it, e.g. `compose_config(["experiment=lenet300_mnist", "paths.output_dir=/tmp/run"])`.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@contextmanager
def reported_errors(program: str) -> Iterator[None]:
    """Turn deepiot's own input errors into `<program>: error: <message>` on stderr and exit status 2.

    These errors (bad config, data, checkpoint, structure, export, a NaN or exploding loss) already say what is wrong and
    what was expected; a Python traceback would only bury that. Other exceptions propagate unchanged.
    """
    from deepiot.checkpoint import CheckpointError
    from deepiot.data.errors import DataError
    from deepiot.export import ExportError
    from deepiot.runtime import CompressionError
    from deepiot.structure.errors import StructureError
    from deepiot.train import TrainingError
    from deepiot.utils import ConfigError

    errors = (
        CheckpointError,
        CompressionError,
        ConfigError,
        DataError,
        ExportError,
        StructureError,
        TrainingError,
    )
    try:
        yield
    except errors as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
