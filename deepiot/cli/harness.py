"""The reproduction harness behind `deepiot-reproduce` (and `scripts/reproduce.py`): task × fold × method × budget × seed, resumable.

Each run gets its own folder `<runs>/<task>/<recipe>/<method>/<cost><budget>/seed<k>/` (the full artefacts of
`run_baseline`) with a `result.json` written last and atomically: a rerun skips every run that has one.
`aggregate` turns the result files into `<results>/<task>/results.json`, `table.md` (mean ± std over seeds per
recipe × method × budget, with the paper's rows beside ours) and Pareto plots (accuracy vs params left, vs
MACs left, vs ONNX Runtime latency). Every run of a task compresses the same original: `run_baseline` loads
`outputs/train/<task>/model.pt` (training it once, on the first run, when it is missing), and the root `seed`
that decides it stays fixed; the grid's seeds vary the method and fine-tuning only (`run_seed`).

Cross-validation: with `folds` (e.g. 0..4) every run also sets `data.dataset.fold=<k>` (the data config's fold
protocol: people left out for activity, recordings or time blocks for user identification — choose it with
the grid's overrides) and lives in `<runs>/<task>/fold<k>/...`; each fold has its own original, trained once in
`<runs>/<task>/fold<k>/original/train/` and shared by the fold's runs. The table then gives, per method and
budget, the mean over folds (seeds averaged inside a fold) with its 95% interval and the paired difference to
DeepIoT on the same folds (`deepiot.baselines.statistics`). The `scratch` method trains the architecture of the
DeepIoT run of the same fold, budget and seed from a fresh initialisation, so it runs after it; where that run's
`compress.try_scratch` already did exactly this training, the scratch run takes it over (`reuse_scratch_training`).
"""

from __future__ import annotations

import functools
import json
import logging
import platform
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deepiot.baselines import statistics
from deepiot.baselines.pipeline import FINETUNE_STATE, METHODS, SCRATCH_ALTERNATIVE_METHODS
from deepiot.checkpoint import load_trained_model
from deepiot.cli import CONFIG_DIR, MOVED_KEYS, check_removed_keys
from deepiot.cli.baseline import (
    DEEPIOT_METHODS,
    RECIPES,
    check_baseline_config,
    compose_baseline_config,
    finetune_config,
    run_baseline,
)
from deepiot.cli.grid_archive import RESULT_FILE, archive_originals, run_folder
from deepiot.cli.train import ensure_trained, trained_original
from deepiot.compression.budget import DEVICE_BUDGETS
from deepiot.compression.state import SCRATCH_STATE_FILE
from deepiot.cost.latency import measure_onnx_latency
from deepiot.device.host import cpu_description
from deepiot.errors import DeepIoTError
from deepiot.export import export_model, manifest_entries
from deepiot.finetune import read_saved_state
from deepiot.utils import ConfigError, atomic_write, describe_differences, flatten

log = logging.getLogger(__name__)

# What a task's summary gives as mean ± std over the seeds of each (recipe, method, cost, budget)
SUMMARY_KEYS = ("test_accuracy", "params_left", "macs_left", "model_bytes_left", "latency_ms", "latency_left")
# `<method>+scratch` (e.g. uniform+scratch): the method with method.try_scratch=true — its architecture is also
# trained from scratch and the better on validation kept, the alternative DeepIoT gets from compress.try_scratch
SCRATCH_SUFFIX = "+scratch"
ALL_METHODS = (
    *DEEPIOT_METHODS,
    *METHODS,
    *(f"{method}{SCRATCH_SUFFIX}" for method in SCRATCH_ALTERNATIVE_METHODS),
)
SCRATCH_SOURCE = (
    "deepiot"  # the harness's `scratch` runs train this method's architecture of the same run from scratch
)
REFERENCE_METHOD = "deepiot"  # paired differences are method − this one
UNRECORDED_CPU = "CPU not recorded"  # runs made before result.json named its CPU

# The paper's rows (docs/paper.md): parameters left (weights only) and accuracy; MNIST/CIFAR tasks are the same
# tasks, the HAPT tasks are stand-ins for the paper's HHAR ones (other data, other original). A row whose
# metric is not accuracy gives it as `result` text instead of `test_accuracy` (shown in the table, not plotted).
PAPER_ROWS: dict[str, list[dict[str, Any]]] = {
    "lenet5_mnist": [
        {"method": "DeepIoT (paper)", "params_left": 0.0198, "test_accuracy": 0.9915, "original": 0.9915},
        {
            "method": "DyNS (paper, sparse)",
            "params_left": 0.0235,
            "test_accuracy": 0.9915,
            "original": 0.9915,
        },
        {"method": "SparseSep (paper)", "params_left": 0.724, "test_accuracy": 0.9895, "original": 0.9915},
        {"method": "L0 reg. sep (paper)", "params_left": 0.0144, "test_accuracy": 0.990, "original": 0.9915},
        {"method": "Bayesian GHS (paper)", "params_left": 0.0065, "test_accuracy": 0.990, "original": 0.9915},
    ],
    "vgg_cifar10": [
        {"method": "DeepIoT (paper)", "params_left": 0.0244, "test_accuracy": 0.906, "original": 0.906},
        {"method": "DyNS (paper, sparse)", "params_left": 0.0705, "test_accuracy": 0.906, "original": 0.906},
    ],
    "lstm_hapt_activity": [
        {
            "method": "DeepIoT (paper, LibriSpeech 5-layer bi-LSTM)",
            "params_left": 0.0998,
            "result": "WER 9.20 (9.31)",
        },
        {"method": "DyNS-Ext (paper, LibriSpeech)", "params_left": 0.371, "result": "WER 9.62 (9.31)"},
    ],
    "deepsense_hapt_activity": [
        {"method": "DeepIoT (paper, HHAR)", "params_left": 0.0616, "test_accuracy": 0.947, "original": 0.946},
        {"method": "DyNS-Ext (paper, HHAR)", "params_left": 0.171, "test_accuracy": 0.946, "original": 0.946},
    ],
    "deepsense_hapt_user": [
        {"method": "DeepIoT (paper, HHAR)", "params_left": 0.0113, "test_accuracy": 0.996, "original": 0.996},
        {
            "method": "DyNS-Ext (paper, HHAR)",
            "params_left": 0.0776,
            "test_accuracy": 0.996,
            "original": 0.996,
        },
    ],
}


@dataclass(frozen=True)
class Grid:
    """What to run for one task; `overrides` are Hydra overrides applied to every run (e.g. finetune.steps=50)."""

    task: str
    methods: tuple[str, ...] = ALL_METHODS
    budgets: tuple[float, ...] = (0.01, 0.02, 0.035)
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: tuple[int, ...] = ()  # () : the data config's single split; (0, 1, ...): cross-validation folds
    recipes: tuple[str, ...] = ("equal",)
    cost: str = "params"
    overrides: tuple[str, ...] = ()
    runs_dir: Path = Path("outputs/reproduce")
    results_dir: Path = Path("experiments/reproduce")
    latency_repeats: int = 200

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(ALL_METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}.")
        if "scratch" in self.methods and SCRATCH_SOURCE not in self.methods:
            raise ValueError(
                f"methods=scratch trains the architecture of the {SCRATCH_SOURCE} run of the same fold, budget and "
                f"seed from scratch; add {SCRATCH_SOURCE} to methods."
            )
        if set(self.recipes) - set(RECIPES):
            raise ValueError(f"recipes must be among {', '.join(RECIPES)}, got {list(self.recipes)}.")
        if self.cost not in ("params", "macs", *DEVICE_BUDGETS):
            raise ValueError(
                f"cost must be params or macs (budgets are fractions) or one of {', '.join(DEVICE_BUDGETS)} "
                f"(budgets in device units), got {self.cost!r}."
            )

    def runs(self) -> list[Run]:
        """Budget by budget (the first budget's table fills first), fold by fold, methods in ALL_METHODS order
        (DeepIoT before the scratch runs that train its architecture)."""
        methods = sorted(self.methods, key=ALL_METHODS.index)
        return [
            Run(self, recipe, method, budget, seed, fold)
            for recipe in self.recipes
            for budget in self.budgets
            for fold in self.folds or (None,)
            for seed in self.seeds
            for method in methods
        ]

    def task_dir(self, fold: int | None) -> Path:
        """`<runs>/<task>` for the single split, `<runs>/<task>/fold<k>` for a fold."""
        base = self.runs_dir / self.task
        return base if fold is None else base / f"fold{fold}"

    @property
    def folds_results_dir(self) -> Path:
        """Where the folds' table goes: `<results>/<task>/<split>` when an override names the data split
        (`data.dataset.split=time_folds` → `time_folds/`), so the tables of two fold protocols of one task never
        overwrite each other; `<results>/<task>/cv` for the data config's own folds (HAPT activity's subjects)."""
        splits = [item.split("=", 1)[1] for item in self.overrides
                  if item.lstrip("+").split("=", 1)[0] == "data.dataset.split"]  # fmt: skip
        return self.results_dir / self.task / (splits[-1] if splits else "cv")

    def fold_overrides(self, fold: int | None) -> list[str]:
        """The overrides that select a fold and its own original (none for the single split)."""
        if fold is None:
            return []
        return [
            f"data.dataset.fold={fold}",
            f"paths.original_dir={self.task_dir(fold) / 'original' / 'train'}",
        ]


@dataclass(frozen=True)
class Run:
    grid: Grid
    recipe: str
    method: str
    budget: float
    seed: int
    fold: int | None = None
    key: tuple[str, str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.recipe, self.method, self.budget))

    @property
    def folder(self) -> Path:
        grid = self.grid
        return run_folder(
            grid.task_dir(self.fold), self.recipe, self.method, grid.cost, self.budget, self.seed
        )

    @property
    def overrides(self) -> list[str]:
        return [
            f"experiment={self.grid.task}",
            f"method={self.method.removesuffix(SCRATCH_SUFFIX)}",
            *(["method.try_scratch=true"] if self.method.endswith(SCRATCH_SUFFIX) else []),
            f"budget.cost={self.grid.cost}",
            f"budget.{'limit' if self.grid.cost in DEVICE_BUDGETS else 'fraction'}={self.budget}",
            f"recipe={self.recipe}",
            f"run_seed={self.seed}",
            "num_threads=1",
            "progress_bar=false",
            "compress.latency_threads=null",  # latency is measured here, in ONNX Runtime
            *self.grid.fold_overrides(self.fold),
            *self.scratch_overrides(),
            *self.grid.overrides,
        ]

    def scratch_overrides(self) -> list[str]:
        """`scratch` trains the architecture of the SCRATCH_SOURCE run with the same fold, budget and seed."""
        if self.method != "scratch":
            return []
        source = Run(self.grid, self.recipe, SCRATCH_SOURCE, self.budget, self.seed, self.fold)
        return [f"method.plan={source.folder / 'slicing_plan.json'}"]


class GridError(DeepIoTError, RuntimeError):
    """Some runs of a grid failed (the others finished and were aggregated)."""


def check_grid(grid: Grid) -> None:
    """Check the grid and every run's settings before the original is trained or any file is written.

    ConfigError names the first bad value: an unknown task, an empty axis, a seed < 0, a budget outside (0, 1]
    (params, macs) or not > 0 (device units), a removed setting among the overrides (named with its replacement),
    a folder blocked by a file, a run's config as `run_baseline` checks it (one composed config per recipe ×
    method), a run folder finished with other overrides or with settings the config files no longer give (an
    experiment or method file edited since: `check_settings`), or a fold's original already in runs_dir trained
    with another config (another data split, another fold's people, other epochs: one runs_dir holds one split).
    """
    check_removed_keys(grid.overrides)
    tasks = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
    if grid.task not in tasks:
        raise ConfigError(f"task={grid.task!r} is not an experiment: expected one of {', '.join(tasks)}.")
    for key, example in (("methods", "magnitude,random"), ("budgets", "0.01,0.02"), ("seeds", "0,1,2"),
                         ("recipes", "equal,best")):  # fmt: skip
        if not getattr(grid, key):
            raise ConfigError(f"{key} is empty: expected at least one value, e.g. {key}={example}.")
    if any(type(seed) is not int or seed < 0 for seed in grid.seeds):
        raise ConfigError(f"seeds={list(grid.seeds)} is invalid: expected integers >= 0, e.g. seeds=0,1,2.")
    if any(type(fold) is not int or fold < 0 for fold in grid.folds):
        raise ConfigError(f"folds={list(grid.folds)} is invalid: expected integers >= 0, e.g. folds=0-4.")
    device_units = grid.cost in DEVICE_BUDGETS
    for budget in grid.budgets:
        number = isinstance(budget, (int, float)) and not isinstance(budget, bool)
        if not number or not (budget > 0 if device_units else 0 < budget <= 1):
            expected = (
                f"numbers > 0 ({DEVICE_BUDGETS[grid.cost].unit} for cost={grid.cost})"
                if device_units
                else f"fractions of the original's {grid.cost} left, in (0, 1]"
            )
            given = ",".join(
                f"{value:g}" if isinstance(value, (int, float)) else repr(value) for value in grid.budgets
            )
            raise ConfigError(f"budgets={given} is invalid: expected {expected}.")
    if type(grid.latency_repeats) is not int or grid.latency_repeats < 1:
        raise ConfigError(f"latency_repeats={grid.latency_repeats!r} is invalid: expected an integer >= 1.")
    for key in ("runs_dir", "results_dir"):
        folder = Path(getattr(grid, key))
        blocking = next((path for path in (folder, *folder.parents) if path.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ConfigError(
                f"{key}={folder} cannot be created: {blocking} is an existing file, not a folder."
            )
    runs = grid.runs()
    settings: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        if (run.recipe, run.method) in settings:
            continue
        try:
            cfg = compose_baseline_config([*run.overrides, f"paths.output_dir={run.folder}"])
            check_baseline_config(cfg)
        except (HydraException, OmegaConfBaseException) as err:
            message = " ".join(str(err).split())
            raise ConfigError(f"the overrides of run {run.folder} do not compose: {message}") from err
        settings[(run.recipe, run.method)] = run_settings(cfg)
    unchecked = []
    for run in runs:
        try:
            done = finished(run)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if done and not check_settings(run, settings[(run.recipe, run.method)]):
            unchecked.append(run.folder)
    if unchecked:
        log.warning(
            "%d finished run(s) of the %s grid were recorded before runs recorded their settings (e.g. %s): they "
            "count as finished without a check against the config files. If a config file changed since they ran "
            "(an experiment's compress.min_kept, say), move their folders out of runs_dir to run them again.",
            len(unchecked), grid.task, unchecked[0],
        )  # fmt: skip
    for fold in grid.folds or (None,):  # an original trained with another split or fold is never reused
        trained_original(original_config(grid, fold))


def run_grid(grid: Grid) -> list[dict[str, Any]]:
    """Run every missing run of the grid (finished ones are skipped), then aggregate; returns the records.

    `check_grid` checks every setting first. A run that fails is logged with its error and the grid goes on
    with the next one; after aggregating what finished, GridError names every failed run. A configuration error
    (ConfigError: it would fail every run) stops the grid at once, as does a Hydra or OmegaConf error.
    """
    check_grid(grid)
    runs, failures, originals = grid.runs(), [], {}
    for index, run in enumerate(runs, start=1):
        if finished(run):
            log.info("[%d/%d] %s: done, skipped", index, len(runs), run.folder)
            continue
        log.info("[%d/%d] %s: running", index, len(runs), run.folder)
        try:
            if run.fold not in originals:
                originals[run.fold] = original_reference(grid, run.fold)
            execute(run, originals[run.fold])
        except (ConfigError, HydraException, OmegaConfBaseException):
            raise
        except Exception as error:  # noqa: BLE001 - one broken run must not cost the rest of a long grid
            log.exception("[%d/%d] %s: failed", index, len(runs), run.folder)
            failures.append(f"{run.folder}: {type(error).__name__}: {error}")
    records = aggregate(grid)
    if failures:
        raise GridError(
            f"{len(failures)} of {len(runs)} runs of the {grid.task} grid failed (the rest are aggregated in "
            f"{grid.results_dir / grid.task}; rerunning the command retries only these):\n"
            + "\n".join(failures)
        )
    return records


def train_originals(grid: Grid) -> list[dict[str, Any]]:
    """`originals_only`: train (or load) and export the original of every fold of the grid (the single split's
    without folds), one after the other in this process, and table them; no run. Returns their records."""
    check_grid(grid)
    originals = [original_reference(grid, fold) for fold in grid.folds or (None,)]
    aggregate(grid)
    return originals


def finished(run: Run) -> bool:
    """True when the run's result.json exists; ValueError when it was written with other overrides (compared
    after `renamed_overrides`)."""
    path = run.folder / RESULT_FILE
    if not path.is_file():
        return False
    recorded = renamed_overrides(json.loads(path.read_text())["overrides"])
    if recorded != run.overrides:
        raise ValueError(
            f"{path} was written by a run with other overrides ({recorded}) than this grid's ({run.overrides}); "
            "delete its folder, or use another runs_dir."
        )
    return True


RUN_KEYS = ("paths", "budget", "run_seed", "data.dataset.fold", "method.plan")  # set per run by its overrides


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """A run's config as its files give it, flattened to dotted keys and unresolved (`${...}` stays as written),
    less RUN_KEYS: the same for every run of one recipe and method of a grid. result.json records it."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    return {key: value for key, value in flat.items()
            if not any(key == run_key or key.startswith(f"{run_key}.") for run_key in RUN_KEYS)}  # fmt: skip


def check_settings(run: Run, expected: Mapping[str, Any]) -> bool:
    """ConfigError when the finished run's recorded settings give another value to a key than the config files
    give now (an experiment or method file edited after the run: the harness would otherwise skip the run as
    finished and table a row made with the old value). Keys one side lacks (added or removed since) are not
    compared; False (nothing compared) for a run recorded before settings were (no "settings"), True otherwise."""
    path = run.folder / RESULT_FILE
    recorded = json.loads(path.read_text()).get("settings")
    if recorded is None:
        return False
    recorded = {MOVED_KEYS.get(key, key): value for key, value in recorded.items()}
    common = recorded.keys() & expected.keys()
    old = {key: recorded[key] for key in common}
    new = {key: expected[key] for key in common}
    if old != new:
        raise ConfigError(
            f"{path} was written with settings the config files no longer give ({describe_differences(old, new)}): "
            "a config changed after this run finished, so its row would not be what the grid's config makes. "
            "Move its folder out of runs_dir (keep it as history) to run it again, or use another runs_dir."
        )
    return True


def renamed_overrides(recorded: Sequence[str]) -> list[str]:
    """Recorded overrides with moved settings under their key now (deepiot.cli.MOVED_KEYS): runs finished
    before the process settings became root keys recorded trainer.num_threads=1 and trainer.progress_bar=false,
    and still count as finished for the same grid."""
    renamed = []
    for override in recorded:
        key, separator, value = override.partition("=")
        renamed.append(f"{MOVED_KEYS.get(key, key)}{separator}{value}")
    return renamed


def original_reference(grid: Grid, fold: int | None = None) -> dict[str, Any]:
    """Train-or-load the task's (fold's) original once, export it and measure its ONNX latency (batch 1, 1
    thread)."""
    folder = grid.task_dir(fold) / "original"
    path = folder / RESULT_FILE
    cfg = original_config(grid, fold)
    if path.is_file() and trained_original(cfg) is not None:  # ConfigError for one trained on another split
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    original_path = ensure_trained(cfg)
    model, checkpoint = load_trained_model(original_path)
    example = torch.zeros(1, *checkpoint["data"]["input_shape"])
    description = manifest_entries(
        checkpoint["model_config"],
        checkpoint["metrics"],
        checkpoint["data"],
        sliced=False,
        source=str(original_path),
    )
    exported = export_model(
        model, example, folder / "export", manifest_extra={**description, "name": grid.task}
    )
    record = {
        "task": grid.task,
        "fold": fold,
        "test_accuracy": float(checkpoint["metrics"]["test_accuracy"]),
        "val_accuracy": float(checkpoint["metrics"].get("val_accuracy", float("nan"))),
        "input_shape": list(checkpoint["data"]["input_shape"]),
        "onnx_path": str(exported.paths["onnx"]),
        "latency_ms": onnx_latency(exported.paths["onnx"], example, grid.latency_repeats),
    }
    atomic_write(path, lambda file: file.write(json.dumps(record, indent=2) + "\n"))
    return record


def original_config(grid: Grid, fold: int | None) -> DictConfig:
    """The composed config of the task's (fold's) original, run folder `<runs>/<task>[/fold<k>]/original`."""
    folder = grid.task_dir(fold) / "original"
    return compose_baseline_config(
        [f"experiment={grid.task}", *grid.fold_overrides(fold), *grid.overrides, f"paths.output_dir={folder}"]
    )


def execute(run: Run, original: Mapping[str, Any]) -> dict[str, Any]:
    """One run: `run_baseline` into the run folder, ONNX latency, then result.json (last, atomically)."""
    cfg = compose_baseline_config([*run.overrides, f"paths.output_dir={run.folder}"])
    reused = reuse_scratch_training(run, cfg)
    report = run_baseline(cfg)
    example = torch.zeros(1, *original["input_shape"])
    sparse = "unstructured" in report
    onnx_path = Path(original["onnx_path"]) if sparse else run.folder / "export" / "model.onnx"
    latency = onnx_latency(onnx_path, example, run.grid.latency_repeats)
    cost = report["cost"]
    params = cost["nonzero_params"] if sparse else cost["compressed"]["params"]
    record = {
        "task": run.grid.task,
        "recipe": run.recipe,
        "method": run.method,
        "cost": run.grid.cost,
        "budget": run.budget,
        "seed": run.seed,
        "fold": run.fold,
        "overrides": run.overrides,
        "settings": run_settings(cfg),
        "test_accuracy": report["accuracy"]["compressed_test"],
        "val_accuracy": report["accuracy"]["compressed_val"],
        "original_test_accuracy": report["accuracy"]["original_test"],
        "params": params,
        "macs": cost["compressed"]["macs"],
        "model_bytes": cost["compressed"]["model_bytes"],
        "params_left": params / cost["original"]["params"],
        "macs_left": cost["left"]["macs"],
        "model_bytes_left": cost["left"]["model_bytes"],
        "latency_ms": latency,
        "latency_left": latency / original["latency_ms"],
        "sparse": sparse,
        "kept_counts": {group["name"]: group["kept"] for group in report["groups"]},
        "torch_pruning_params": report.get("torch_pruning", {}).get("params"),
        "element_choice": report.get("element_choice"),  # DeepIoT: the weights fine-tuning started from
        "wall_time_s": report["wall_time_s"],
        "training_reused_from": str(reused) if reused else None,  # scratch: the DeepIoT run that trained it
        "cpu": cpu_description(),  # where it ran: fp32 rounding and the latency are the machine's
    }
    atomic_write(run.folder / RESULT_FILE, lambda file: file.write(json.dumps(record, indent=2) + "\n"))
    return record


def reuse_scratch_training(run: Run, cfg: DictConfig) -> Path | None:
    """A `scratch` run trains what its DeepIoT run's `compress.try_scratch` has already trained: the same sliced
    architecture, re-initialised with the same seed, trained with the same recipe and teacher (the fold's
    original). When that run is finished and kept its training (`scratch_finetune_state.pt`) with this run's
    recipe, seed and number of steps, the file becomes this run's fine-tuning state, which `finetune` resumes at
    its last step — what training it again gives, bit for bit (tests/test_reproduce.py).
    Returns the DeepIoT run folder it came from, or None (the run trains itself)."""
    if run.method != "scratch" or (run.folder / FINETUNE_STATE).exists():
        return None
    source = Run(run.grid, run.recipe, SCRATCH_SOURCE, run.budget, run.seed, run.fold).folder
    state, report = source / SCRATCH_STATE_FILE, source / "report.json"
    if not ((source / RESULT_FILE).is_file() and state.is_file() and report.is_file()):
        return None
    recipe = finetune_config(cfg)
    seed = json.loads(report.read_text()).get("config", {}).get("loop", {}).get("seed")
    if recipe is None or seed != int(cfg.run_seed):
        return None
    try:  # the recipe check `finetune` makes before it resumes
        saved = read_saved_state(state, recipe)
    except ConfigError:
        return None
    if saved["loop"]["step"] != recipe.steps:
        return None
    data = state.read_bytes()
    atomic_write(run.folder / FINETUNE_STATE, lambda file: file.write(data), binary=True)
    log.info("%s: the training from scratch of %s is this run's (same architecture, seed and recipe)", run.folder,
             source)  # fmt: skip
    return source


def onnx_latency(path: str | Path, example: torch.Tensor, repeats: int) -> float:
    """Median ONNX Runtime latency in ms, batch 1, one thread."""
    return measure_onnx_latency(path, example, threads=1, warmup=min(20, repeats), repeats=repeats).median_ms


def remeasure_latencies(grid: Grid) -> int:
    """Measure again, here, the ONNX latency (batch 1, 1 thread) of the task's originals and finished runs.

    A grid whose runs ran on several machines (launcher=ray or submitit, another host) has latencies from each;
    this puts them all on this machine, side by side in one process, before the tables compare them. Updates
    latency_ms, latency_left and latency_host in each result.json (atomically); returns the number of runs."""
    task_runs = grid.runs_dir / grid.task
    host = platform.node()
    originals = {}
    for path in [
        task_runs / "original" / RESULT_FILE,
        *sorted(task_runs.glob(f"fold*/original/{RESULT_FILE}")),
    ]:
        if path.is_file():
            record = json.loads(path.read_text())
            example = torch.zeros(1, *record["input_shape"])
            record.update(latency_ms=onnx_latency(record["onnx_path"], example, grid.latency_repeats),
                          latency_host=host)  # fmt: skip
            atomic_write(path, lambda file, record=record: file.write(json.dumps(record, indent=2) + "\n"))
            originals[record.get("fold")] = record
    paths = [
        *task_runs.glob(f"*/*/*/seed*/{RESULT_FILE}"),
        *task_runs.glob(f"fold*/*/*/*/seed*/{RESULT_FILE}"),
    ]
    for path in sorted(paths):
        record = json.loads(path.read_text())
        original = originals[record.get("fold")]
        onnx_path = original["onnx_path"] if record["sparse"] else path.parent / "export" / "model.onnx"
        latency = onnx_latency(onnx_path, torch.zeros(1, *original["input_shape"]), grid.latency_repeats)
        record.update(latency_ms=latency, latency_left=latency / original["latency_ms"], latency_host=host)
        atomic_write(path, lambda file, record=record: file.write(json.dumps(record, indent=2) + "\n"))
    log.info("%s: latency measured again on %s for %d originals and %d runs", grid.task, host,
                len(originals), len(paths))  # fmt: skip
    return len(paths)


# ---------------------------------------------------------------------------------------------- aggregation


def aggregate(grid: Grid) -> list[dict[str, Any]]:
    """Collect every finished run of the task (any grid), write results.json, table.md and the Pareto plots.

    Runs of the single split and of cross-validation folds are kept apart: the single split's go to
    `<results>/<task>/`, the folds' to `Grid.folds_results_dir` (`<results>/<task>/cv/`, or the split's name when
    an override names it; table with 95% intervals and paired differences),
    with a copy of each fold's original (`originals/fold<k>.pt`, deepiot.cli.grid_archive)."""
    task_runs = grid.runs_dir / grid.task
    single = [json.loads(path.read_text()) for path in sorted(task_runs.glob(f"*/*/*/seed*/{RESULT_FILE}"))]
    folded = [
        json.loads(path.read_text()) for path in sorted(task_runs.glob(f"fold*/*/*/*/seed*/{RESULT_FILE}"))
    ]
    single = [record for record in single if record.get("fold") is None]
    originals = [
        json.loads(path.read_text()) for path in sorted(task_runs.glob(f"fold*/original/{RESULT_FILE}"))
    ]
    if single or not (folded or originals):
        original_path = task_runs / "original" / RESULT_FILE
        original = json.loads(original_path.read_text()) if original_path.is_file() else None
        write_results(grid.task, grid.results_dir / grid.task, single, summarise(single), original, table)
    if folded or originals:  # the folds' originals are tabled also before any run (originals_only)
        original_accuracy = {original["fold"]: original["test_accuracy"] for original in originals}
        summary = summarise_folds(folded, original_accuracy)
        folds_table = functools.partial(cv_table, folds_folder=grid.folds_results_dir.name)
        write_results(
            grid.task, grid.folds_results_dir, folded, summary, summarise_originals(originals), folds_table
        )
        archive_originals(task_runs, grid.folds_results_dir)  # another machine can resume the grid
    return single + folded


def write_results(
    task: str,
    out: Path,
    records: Sequence[Mapping[str, Any]],
    summary: list[dict[str, Any]],
    original: Mapping[str, Any] | None,
    make_table: Any,
) -> None:
    """results.json (every run + summary), table.md and one Pareto plot per recipe into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    document = {"task": task, "original": original, "summary": summary, "runs": list(records)}
    atomic_write(out / "results.json", lambda file: file.write(json.dumps(document, indent=2) + "\n"))
    atomic_write(out / "table.md", lambda file: file.write(make_table(task, summary, original)))
    for recipe in sorted({row["recipe"] for row in summary}):
        rows = [row for row in summary if row["recipe"] == recipe]
        plot_pareto(task, rows, original, out / f"pareto_{recipe}.png")


def summarise(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (recipe, method, cost, budget)."""
    rows = []
    for (recipe, method, cost, budget), members in sorted(group_runs(records).items()):
        row: dict[str, Any] = {"recipe": recipe, "method": method, "cost": cost, "budget": budget}
        row["seeds"] = len(members)
        row["sparse"] = any(member["sparse"] for member in members)
        row["cpus"] = cpu_counts(members)
        for key in SUMMARY_KEYS:
            values = np.array([member[key] for member in members], dtype=float)
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def group_runs(records: Iterable[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """{(recipe, method, cost, budget): runs}."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for record in records:
        key = (record["recipe"], record["method"], record["cost"], record["budget"])
        groups.setdefault(key, []).append(record)
    return groups


def per_fold(members: Iterable[Mapping[str, Any]], key: str) -> dict[int, float]:
    """{fold: mean of `key` over the fold's seeds}."""
    values: dict[int, list[float]] = {}
    for member in members:
        values.setdefault(member["fold"], []).append(float(member[key]))
    return statistics.fold_means(values)


def summarise_folds(
    records: Iterable[Mapping[str, Any]], originals: Mapping[int, float] | None = None
) -> list[dict[str, Any]]:
    """Per (recipe, method, cost, budget): mean over folds (seeds averaged inside a fold) with the 95% interval
    of every SUMMARY_KEYS value, and the paired differences in test accuracy to REFERENCE_METHOD and to the folds'
    originals (`originals`: {fold: test accuracy}) on shared folds."""
    groups = group_runs(records)
    rows = []
    for (recipe, method, cost, budget), members in sorted(groups.items()):
        row: dict[str, Any] = {"recipe": recipe, "method": method, "cost": cost, "budget": budget}
        row["folds"] = sorted({member["fold"] for member in members})
        row["seeds"] = len(members)
        row["sparse"] = any(member["sparse"] for member in members)
        row["cpus"] = cpu_counts(members)
        row["params"] = float(np.mean([member["params"] for member in members]))
        for key in SUMMARY_KEYS:
            fold_values = list(per_fold(members, key).values())
            interval = statistics.mean_interval(fold_values)
            row[key], row[f"{key}_low"], row[f"{key}_high"] = interval.mean, interval.low, interval.high
            row[f"{key}_std"] = float(np.std(fold_values, ddof=1)) if interval.count > 1 else 0.0
        reference = groups.get((recipe, REFERENCE_METHOD, cost, budget))
        difference = None
        if reference is not None and method != REFERENCE_METHOD:
            difference = statistics.paired_difference(
                per_fold(members, "test_accuracy"), per_fold(reference, "test_accuracy")
            )
        row["diff_vs_reference"] = interval_record(difference)
        row["starts"] = fine_tuning_starts(members)
        row["diff_vs_original"] = interval_record(
            statistics.paired_difference(per_fold(members, "test_accuracy"), originals or {})
        )
        rows.append(row)
    return rows


def cpu_counts(members: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many of a row's runs ran on each CPU (`deepiot.device.host.cpu_description`; runs recorded before
    the field, 2026-12-07, carry none and count as UNRECORDED_CPU)."""
    return dict(sorted(Counter(member.get("cpu") or UNRECORDED_CPU for member in members).items()))


def machine_lines(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines naming the CPUs a table's runs ran on, per budget, when there is more than one (fp32
    rounding and the latency are each run's machine's); [] when every run ran on one CPU."""
    if len({cpu for row in summary for cpu in row.get("cpus", {})}) < 2:
        return []
    per_budget: dict[tuple, Counter] = {}
    for row in summary:
        per_budget.setdefault((row["cost"], row["budget"]), Counter()).update(row.get("cpus", {}))
    lines = ["", "Runs made on more than one machine (runs per CPU; accuracy can move with the CPU's fp32 rounding, "
             "and a run's latency is its own machine's unless the grid measured them again on one host, "
             "`latency_host`):", ""]  # fmt: skip
    for (cost, budget), counts in sorted(per_budget.items()):
        machines = ", ".join(f"{cpu} {count}" for cpu, count in sorted(counts.items()))
        lines.append(f"- {budget_text(budget, cost)}: {machines}")
    return lines


def fine_tuning_starts(members: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many of a row's runs fine-tuned from each start ({"l1": 3, "scratch": 2}; {} for runs without an
    element choice): DeepIoT's `compress.element_choice` candidate, "handed_on" for a baseline's own kept weights
    (`method.try_scratch`), or "scratch" where the re-initialised architecture was better on validation."""
    starts: dict[str, int] = {}
    for member in members:
        choice = member.get("element_choice")
        if not choice:
            continue
        start = (
            "scratch"
            if choice.get("scratch", {}).get("chosen") == "scratch"
            else choice.get("chosen", "handed_on")
        )
        starts[start] = starts.get(start, 0) + 1
    return dict(sorted(starts.items()))


def interval_record(interval: statistics.Interval | None) -> dict[str, Any] | None:
    """An interval as a JSON-ready dict (mean, low, high, count, significant), or None."""
    return None if interval is None else interval._asdict() | {"significant": interval.significant}


def summarise_originals(originals: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The folds' originals: mean test accuracy with its 95% interval, mean latency, and every fold's record."""
    if not originals:
        return None
    accuracy = statistics.mean_interval([original["test_accuracy"] for original in originals])
    return {
        "test_accuracy": accuracy.mean,
        "test_accuracy_low": accuracy.low,
        "test_accuracy_high": accuracy.high,
        "latency_ms": float(np.mean([original["latency_ms"] for original in originals])),
        "folds": list(originals),
    }


def budget_text(budget: float, cost: str) -> str:
    """'2% params' for a fraction, '40 KiB model_kb' for a budget in device units."""
    if cost in DEVICE_BUDGETS:
        return f"{budget:g} {DEVICE_BUDGETS[cost].unit} {cost.rsplit('_', 1)[0]}"
    return f"{100 * budget:g}% {cost}"


def table(task: str, summary: Sequence[Mapping[str, Any]], original: Mapping[str, Any] | None) -> str:
    """Markdown: our rows (mean ± std over seeds), then the paper's rows for the task."""
    lines = [f"# {task}", ""]
    if original is not None:
        lines += [
            f"Original: test accuracy {100 * original['test_accuracy']:.2f}%, ONNX Runtime latency "
            f"{original['latency_ms']:.3f} ms (batch 1, 1 thread).",
            "",
        ]
    lines += [
        "| recipe | method | budget | seeds | params left | MACs left | test accuracy | ONNX latency (ms) | latency left |",
        "|-|-|-|-|-|-|-|-|-|",
    ]
    for row in summary:
        note = " (nonzero, sparse)" if row["sparse"] else ""
        lines.append(
            f"| {row['recipe']} | {row['method']} | {budget_text(row['budget'], row['cost'])} | {row['seeds']} | "
            f"{100 * row['params_left']:.2f}%{note} | {100 * row['macs_left']:.2f}% | "
            f"{100 * row['test_accuracy']:.2f} ± {100 * row['test_accuracy_std']:.2f}% | "
            f"{row['latency_ms']:.3f} ± {row['latency_ms_std']:.3f} | {100 * row['latency_left']:.1f}% |"
        )
    paper = PAPER_ROWS.get(task, [])
    if not paper:
        lines += ["", "The paper (docs/paper.md) reports no result for this task."]
    else:
        lines += ["", "The paper (docs/paper.md; parameters counted as weights only, its own original):", ""]
        lines += ["| method | params left | test accuracy (original) |", "|-|-|-|"]
        for row in paper:
            result = row.get("result") or f"{100 * row['test_accuracy']:.2f}% ({100 * row['original']:.2f}%)"
            lines.append(f"| {row['method']} | {100 * row['params_left']:.2f}% | {result} |")
    sparse = any(row["sparse"] for row in summary)
    if sparse:
        lines += [
            "",
            "Unstructured rows count nonzero parameters of a model of the original shape: they need sparse storage "
            "and run at the original's dense MACs and latency (no smaller dense model exists).",
        ]
    lines += machine_lines(summary)
    return "\n".join(lines) + "\n"


def interval_text(row: Mapping[str, Any], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """ "94.12 [93.01, 95.23]" (the mean and its 95% interval), or the mean alone without an interval."""
    mean = f"{scale * row[key]:.{digits}f}"
    if row.get(f"{key}_low") is None:
        return mean
    return f"{mean} [{scale * row[f'{key}_low']:.{digits}f}, {scale * row[f'{key}_high']:.{digits}f}]"


def difference_text(difference: Mapping[str, Any] | None) -> str:
    """ "+1.20 [0.40, 2.00] *" in points (* where the interval excludes 0), "—" without a pairing."""
    if difference is None:
        return "—"
    text = f"{100 * difference['mean']:+.2f}"
    if difference["low"] is None:
        return text
    marker = " *" if difference["significant"] else ""
    return f"{text} [{100 * difference['low']:+.2f}, {100 * difference['high']:+.2f}]{marker}"


FOLD_PROTOCOLS = {"cv": "the data config's folds"}  # the title of a fold table by its folder's name


def cv_table(
    task: str,
    summary: Sequence[Mapping[str, Any]],
    original: Mapping[str, Any] | None,
    folds_folder: str = "cv",
) -> str:
    """Markdown: per method and budget the mean over folds with its 95% interval and the paired difference
    to DeepIoT; the originals' accuracy per fold. The title names the fold protocol by `folds_folder`
    (`Grid.folds_results_dir`'s name: the split an override names, e.g. time_folds)."""
    split = FOLD_PROTOCOLS.get(folds_folder, folds_folder.replace("_", " "))
    lines = [f"# {task}: cross-validation ({split})", ""]
    if original is not None:
        folds = ", ".join(
            f"fold {record['fold']}: {100 * record['test_accuracy']:.2f}%" for record in original["folds"]
        )
        lines += [
            f"Originals (one per fold): test accuracy {interval_text(original, 'test_accuracy')}% "
            f"(mean [95% interval] over {len(original['folds'])} folds; {folds}); ONNX Runtime latency "
            f"{original['latency_ms']:.3f} ms (batch 1, 1 thread).",
            "",
        ]
    lines += cv_glance(summary)
    lines += [
        "Mean over folds (seeds averaged inside a fold) with the 95% Student-t interval; Δ: the paired difference "
        f"in test accuracy to {REFERENCE_METHOD} on the same folds, in points (* : the interval excludes 0).",
        "",
        "| recipe | method | budget | folds | runs | params | params left | MACs left | test accuracy (%) "
        f"| Δ vs {REFERENCE_METHOD} (points) | Δ vs original (points) | ONNX latency (ms) |",
        "|-|-|-|-|-|-|-|-|-|-|-|-|",
    ]
    for row in summary:
        note = " (nonzero, sparse)" if row["sparse"] else ""
        lines.append(
            f"| {row['recipe']} | {row['method']} | {budget_text(row['budget'], row['cost'])} | {len(row['folds'])} "
            f"| {row['seeds']} | {row['params']:,.0f} | {100 * row['params_left']:.2f}%{note} "
            f"| {100 * row['macs_left']:.2f}% | {interval_text(row, 'test_accuracy')} "
            f"| {difference_text(row['diff_vs_reference'])} | {difference_text(row.get('diff_vs_original'))} "
            f"| {row['latency_ms']:.3f} |"
        )
    if any(row["sparse"] for row in summary):
        lines += ["", "Unstructured rows count nonzero parameters of a model of the original shape (sparse storage, "
                  "the original's dense MACs and latency)."]  # fmt: skip
    starts = [row for row in summary if row.get("starts")]
    if starts:
        lines += ["", "Where fine-tuning started (runs per start: the element choice's candidate, or scratch where the "
                  "searched architecture re-initialised was better on validation):", ""]  # fmt: skip
        lines += [
            f"- {row['recipe']} {row['method']} {budget_text(row['budget'], row['cost'])}: "
            + ", ".join(f"{start} {count}" for start, count in row["starts"].items())
            for row in starts
        ]
    lines += machine_lines(summary)
    return "\n".join(lines) + "\n"


def cv_glance(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per recipe, one row per budget and one column per method (mean test accuracy over folds,
    the paired Δ to DeepIoT in brackets), then how many baselines DeepIoT is significantly ahead of, not
    separable from and significantly behind at each budget. Empty without a DeepIoT row to compare with."""
    lines: list[str] = []
    for recipe in sorted({row["recipe"] for row in summary}):
        rows = [row for row in summary if row["recipe"] == recipe]
        if not any(row["method"] == REFERENCE_METHOD for row in rows):
            continue
        others = sorted({row["method"] for row in rows} - {REFERENCE_METHOD})
        methods = [REFERENCE_METHOD, *others]
        cells = {(row["budget"], row["cost"], row["method"]): row for row in rows}
        budgets = sorted({(row["budget"], row["cost"]) for row in rows})
        lines += [
            f"At a glance ({recipe} recipe): mean test accuracy over folds (%), the paired Δ to {REFERENCE_METHOD} "
            "in points in brackets (* : its 95% interval excludes 0); the last column counts the other methods "
            f"{REFERENCE_METHOD} is significantly ahead of / not separable from / significantly behind.",
            "",
            "| budget | " + " | ".join(methods) + " | ahead / even / behind |",
            "|-|" + "-|" * (len(methods) + 1),
        ]
        for budget, cost in budgets:
            texts, tally = [], [0, 0, 0]
            for method in methods:
                row = cells.get((budget, cost, method))
                if row is None:
                    texts.append("—")
                    continue
                text = f"{100 * row['test_accuracy']:.2f}"
                difference = row["diff_vs_reference"] if method != REFERENCE_METHOD else None
                if difference is not None:
                    star = "*" if difference["significant"] else ""
                    text += f" ({100 * difference['mean']:+.2f}{star})"
                    # the method minus DeepIoT below 0, significantly: DeepIoT is ahead
                    tally[1 if not difference["significant"] else 0 if difference["mean"] < 0 else 2] += 1
                texts.append(text)
            lines.append(
                f"| {budget_text(budget, cost)} | "
                + " | ".join(texts)
                + f" | {tally[0]} / {tally[1]} / {tally[2]} |"
            )
        lines.append("")
    return lines


def plot_pareto(
    task: str, rows: Sequence[Mapping[str, Any]], original: Mapping[str, Any] | None, path: Path
) -> None:
    """Test accuracy against params left, MACs left and ONNX latency; one series per method (mean ± std)."""
    from deepiot.report import _pyplot

    plt = _pyplot()
    from matplotlib import ticker

    figure, panels = plt.subplots(1, 3, figsize=(15, 4))
    axes_keys = (("params_left", "params left (%)", 100.0), ("macs_left", "MACs left (%)", 100.0),
                 ("latency_ms", "ONNX Runtime latency, batch 1, 1 thread (ms)", 1.0))  # fmt: skip
    for axes, (key, label, scale) in zip(panels, axes_keys, strict=True):
        for method in sorted({row["method"] for row in rows}):
            points = sorted((row for row in rows if row["method"] == method), key=lambda row: row[key])
            axes.errorbar(
                [scale * row[key] for row in points],
                [100 * row["test_accuracy"] for row in points],
                yerr=np.array([accuracy_error_bar(row) for row in points]).T,
                marker="o", capsize=3, label=method,
                linestyle="none" if key == "latency_ms" else "-",  # latency is not monotone in the budget
            )  # fmt: skip
        if key == "params_left":
            for row in (row for row in PAPER_ROWS.get(task, []) if "test_accuracy" in row):
                axes.scatter(
                    100 * row["params_left"],
                    100 * row["test_accuracy"],
                    marker="*",
                    s=80,
                    label=row["method"],
                )
        if original is not None:
            axes.axhline(100 * original["test_accuracy"], color="gray", linestyle="--", label="original")
        if key != "latency_ms":
            axes.set_xscale("log")
            axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 3, 10 rather than 3×10⁰
            axes.xaxis.set_minor_formatter(
                ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
            )
        low, high = axes.get_ylim()  # an interval of few folds may reach past 0% or 100%
        axes.set_ylim(bottom=max(low, -0.5), top=min(high, 100.5))
        axes.set_xlabel(label)
        axes.set_ylabel("test accuracy (%)")
    panels[0].legend(fontsize=7)
    spread = "95% interval over folds" if any("folds" in row for row in rows) else "± std over seeds"
    figure.suptitle(f"{task}: accuracy vs size, compute and latency (mean, {spread})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def accuracy_error_bar(row: Mapping[str, Any]) -> tuple[float, float]:
    """(below, above) the mean test accuracy in points: the 95% interval when there is one, else ± std."""
    if row.get("test_accuracy_low") is not None:
        return (100 * (row["test_accuracy"] - row["test_accuracy_low"]),
                100 * (row["test_accuracy_high"] - row["test_accuracy"]))  # fmt: skip
    return (100 * row["test_accuracy_std"], 100 * row["test_accuracy_std"])


def parse_folds(text: str) -> tuple[int, ...]:
    """ "0-4" → (0, 1, 2, 3, 4); "0,2" → (0, 2); "" → () (the single split)."""
    folds: list[int] = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        first, dash, last = part.partition("-")
        folds += list(range(int(first), int(last) + 1)) if dash else [int(part)]
    return tuple(folds)


def parse_values(text: str, kind: type) -> tuple:
    """ "a,b,c" → (kind(a), kind(b), kind(c))."""
    return tuple(kind(value) for value in text.split(",") if value)
