"""Thin Hydra command-line entry points (`deepiot-train`, ...) and the root config they share."""

from __future__ import annotations

import functools
import importlib.resources
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from deepiot.errors import DeepIoTError
from deepiot.models import REFERENCE_MODELS


def config_dir() -> Path:
    """The folder of the Hydra configs: the package deepiot.configs, which an install (wheel or editable) maps
    onto the repository's top-level configs/ (pyproject.toml's package-dir); in a source checkout on PYTHONPATH,
    which maps nothing, the configs/ folder beside the package."""
    try:
        return Path(str(importlib.resources.files("deepiot.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "configs"


# Absolute: Hydra would read a relative config_path as relative to the calling module.
CONFIG_DIR = config_dir()

# Short model names for default run names (configs/model/<name>.yaml); other classes use their lowercased name.
MODEL_NAMES = {model.__name__: name for name, model in REFERENCE_MODELS.items()}


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
    """Turn deepiot's own errors (`deepiot.errors.DeepIoTError`) into `<program>: error: <message>` on stderr and
    exit status 2.

    These errors (bad config, data, checkpoint, structure, export, profile, a NaN or exploding loss) already say
    what is wrong and what was expected; a Python traceback would only bury that. Other exceptions propagate
    unchanged.
    """
    try:
        yield
    except DeepIoTError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


# Launchers (hydra.launcher._target_ ends with the key) → the package they import when a sweep starts, and the
# extra of this project that installs it.
LAUNCHER_PACKAGES = {
    "RayLauncher": ("ray", "ray"),
    "JoblibLauncher": ("joblib", "launchers"),
    "SlurmLauncher": ("submitit", "launchers"),
    "LocalLauncher": ("submitit", "launchers"),
}


def check_launcher(config_name: str, arguments: Sequence[str]) -> None:
    """Before a sweep (`-m`) starts: the launcher's package is installed and its settings are valid.

    The launcher runs inside Hydra, which would answer a missing package or a bad setting with a traceback
    after writing the sweep folder; ConfigError says what to install or set instead. The root config is
    composed with the command line's plain overrides (sweeps left out); when it does not compose, Hydra's own
    run reports that.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deepiot.utils import ConfigError

    if not any(argument in ("-m", "--multirun") for argument in arguments):
        return
    try:
        candidates = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
        parsed = OverridesParser.create().parse_overrides(candidates)
        overrides = [override.input_line for override in parsed if not override.is_sweep_override()]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    except Exception as err:  # noqa: BLE001 - Hydra's own run reports what does not compose, but a launcher's
        text = " ".join(f"{err} {err.__cause__ or ''}".split())  # setting of the wrong type is named here
        if "hydra.launcher." in text:
            raise ConfigError(f"the sweep launcher's settings are invalid: {text}") from None
        return
    finally:
        GlobalHydra.instance().clear()
    target = str(launcher.get("_target_", ""))
    package, extra = LAUNCHER_PACKAGES.get(target.rsplit(".", 1)[-1], (None, None))
    if package is not None:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"the sweep launcher {target} needs the Python package {package!r}, which is not installed: "
                f'install it with pip install -e ".[{extra}]" (from the repository root), or choose another '
                "launcher (hydra/launcher=parallel, or none for one job after another)."
            )
    n_jobs = launcher.get("n_jobs", None) if "Joblib" in target else None
    if n_jobs is not None and (type(n_jobs) is not int or n_jobs == 0):
        raise ConfigError(
            f"config value hydra.launcher.n_jobs={n_jobs!r} is invalid: expected the number of jobs at once, an "
            "integer >= 1 (or -1: one per CPU core)."
        )


# Settings that moved → their key now: the process settings left the trainer group (training of the original) for
# the root config, shared by deepiot-train, deepiot-compress, deepiot-baseline and deepiot-reproduce. Refused on the
# command line (REMOVED_KEYS); the harness renames them in the overrides that older runs recorded.
MOVED_KEYS = {"trainer.num_threads": "num_threads", "trainer.progress_bar": "progress_bar"}

# Settings that no longer exist → what to use instead. Hydra would only say that the key is not in the config and
# suggest `+key=...`, which adds a value nothing reads.
REMOVED_KEYS = {
    "paths.artifacts_dir": "it was never read. A run writes into its run folder (paths.output_dir, set by "
    "hydra.run.dir): slicing_plan.json, and the exported models with their manifest under export/; deepiot-export "
    "writes to out_dir",
    **{
        old: f"it is the root key {new} now, a process setting shared by deepiot-train, deepiot-compress, "
        f"deepiot-baseline and deepiot-reproduce (the trainer group configures training of the original only): "
        f"use {new}=<value> instead of {old}=<value>"
        for old, new in MOVED_KEYS.items()
    },
}


def check_removed_keys(arguments: Sequence[str]) -> None:
    """ConfigError naming the replacement of a removed setting on the command line (`key=`, `+key=`, `++key=`,
    `~key`)."""
    from deepiot.utils import ConfigError

    for argument in arguments:
        key = argument.split("=", 1)[0].lstrip("+~")
        if key in REMOVED_KEYS:
            raise ConfigError(f"{key} is no longer a setting: {REMOVED_KEYS[key]}.")


def checked_command_line(program: str, config_name: str) -> Any:
    """Decorate a `@hydra.main` entry point so that `check_removed_keys` and `check_launcher` run first: a removed
    setting or a bad launcher ends with `<program>: error: ...` and exit status 2 before Hydra writes anything."""

    def decorate(hydra_main: Any) -> Any:
        @functools.wraps(hydra_main)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is None:
                with reported_errors(program):
                    check_removed_keys(sys.argv[1:])
                    check_launcher(config_name, sys.argv[1:])
            return hydra_main(cfg_passthrough)

        return main

    return decorate
