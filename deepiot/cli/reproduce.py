"""Reproduction harness (`deepiot-reproduce`, or `python scripts/reproduce.py`): task × fold × method × budget ×
seed, resumable (finished runs are skipped), aggregated.

    deepiot-reproduce task=lenet5_mnist
    deepiot-reproduce task=lenet5_mnist methods=magnitude,random,torch_pruning,unstructured \
        budgets=0.01,0.02,0.035 seeds=0,1,2 recipes=equal,best finetune.steps=3000

Grid keys: task, methods (a structured baseline as <name>+scratch, e.g. uniform+scratch: with method.try_scratch=true,
its architecture also trained from scratch and the better on validation kept, as DeepIoT's compress.try_scratch), budgets, seeds, folds (e.g. 0-4: cross-validation folds of the data config's fold
protocol, each with its own original; tables in <results_dir>/<task>/cv/, or <results_dir>/<task>/<split>/ when
data.dataset.split=<split> is given, e.g. time_folds/), recipes (equal | best), cost (params | macs: budgets are fractions;
latency_ms | model_kb | peak_activation_kb: budgets in ms / KiB, latency_ms with cost.profile=... among the overrides), runs_dir
(default outputs/reproduce), results_dir (default experiments/reproduce), latency_repeats, aggregate_only,
remeasure_latency (true: measure every finished run's latency again on this machine, e.g. after runs on a cluster),
originals_only (true: train and export every fold's original and table their accuracy; no method runs),
resume_from (a CV table folder, e.g. <results_dir>/<task>/cv: its archived originals and finished runs are put into
runs_dir first, so a grid begun on another machine goes on here; training is bit-identical on one CPU model only).
Every other key=value is a Hydra override of configs/baseline.yaml applied to every run (finetune.*, data.*,
compress.*, ...). Runs go to <runs_dir>/<task>/<recipe>/<method>/<cost><budget>/seed<k>/ (result.json last);
<results_dir>/<task>/ receives results.json, table.md and pareto_<recipe>.png.

Launchers (deepiot.cli.dispatch): launcher=sequential (default: one run after the other in this process) |
parallel (joblib, `workers` local processes) | ray (Ray tasks on ray_address= or $RAY_ADDRESS, else a local Ray of
`workers` CPUs) | submitit_local (submitit's LocalExecutor, logs in <runs_dir>/.submitit/); workers=N (default 2).
The originals run first, then the runs, then the scratch runs; a killed grid resumes on any launcher.
    deepiot-reproduce task=lenet5_mnist seeds=0,1,2 launcher=parallel workers=3
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from deepiot.cli.dispatch import run_grid_on, split_launch_arguments
from deepiot.cli.grid_archive import restore_grid
from deepiot.cli.harness import (
    Grid,
    aggregate,
    check_grid,
    parse_folds,
    parse_values,
    remeasure_latencies,
    train_originals,
)
from deepiot.errors import DeepIoTError

GRID_KEYS = {
    "methods": lambda text: parse_values(text, str),
    "budgets": lambda text: parse_values(text, float),
    "seeds": lambda text: parse_values(text, int),
    "folds": parse_folds,
    "recipes": lambda text: parse_values(text, str),
    "cost": str,
    "runs_dir": Path,
    "results_dir": Path,
    "latency_repeats": int,
}

# true/false keys: aggregate_only (tables and plots from the finished runs, nothing run), remeasure_latency (the
# ONNX latency of every finished run and original measured again here, before the grid runs or aggregates),
# originals_only (train and export every fold's original and table them, no method run)
FLAGS = ("aggregate_only", "remeasure_latency", "originals_only")

# what each grid key takes, for the error message of a value that does not parse
EXPECTED = {
    "budgets": "comma-separated numbers, e.g. budgets=0.01,0.02",
    "seeds": "comma-separated integers >= 0, e.g. seeds=0,1,2",
    "latency_repeats": "an integer >= 1",
}


def fail(message: str) -> NoReturn:
    """The one error paragraph on stderr, exit status 2 (as the deepiot-* commands)."""
    print(f"deepiot-reproduce: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(arguments: list[str]) -> tuple[Grid, dict[str, Any]]:
    """key=value arguments → (Grid, {"aggregate_only": ..., "remeasure_latency": ..., "resume_from": path or None})."""
    values, overrides, flags = {}, [], {**dict.fromkeys(FLAGS, False), "resume_from": None}
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if not separator:
            fail(f"expected key=value, got {argument!r} (see --help in the docstring).")
        if key == "task":
            values["task"] = value
        elif key in FLAGS:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                fail(f"{key}={value!r} is invalid: expected true or false.")
            flags[key] = value.lower() in ("true", "1", "yes")
        elif key == "resume_from":
            if not value:
                fail(
                    "resume_from is empty: expected a CV table folder, e.g. experiments/reproduce/<task>/cv."
                )
            flags["resume_from"] = Path(value)
        elif key in GRID_KEYS:
            try:
                values[key] = GRID_KEYS[key](value)
            except ValueError:
                fail(f"{key}={value!r} is invalid: expected {EXPECTED.get(key, 'another value')}.")
        else:
            overrides.append(argument)
    if "task" not in values:
        fail("task=<experiment name> is required, e.g. task=lenet5_mnist.")
    return Grid(**values, overrides=tuple(overrides)), flags


def main() -> None:
    if any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        launch, arguments = split_launch_arguments(sys.argv[1:])
        grid, flags = parse(arguments)
        check_grid(grid)  # every setting of every run, before the original is trained or a file written
    except ValueError as error:  # Grid's own checks and check_grid's ConfigError
        fail(str(error))
    try:
        if flags["resume_from"] is not None:
            restored = restore_grid(grid.task, grid.runs_dir, flags["resume_from"])
            print(f"[reproduce] {grid.task}: {restored} finished run(s) restored from {flags['resume_from']}")
        if flags["remeasure_latency"]:
            remeasure_latencies(grid)
        if flags["originals_only"]:
            originals = train_originals(grid)
        else:
            records = aggregate(grid) if flags["aggregate_only"] else run_grid_on(grid, **launch)
    except DeepIoTError as error:  # GridError (failed runs), ConfigError, ...
        fail(str(error))
    table = (grid.folds_results_dir if grid.folds else grid.results_dir / grid.task) / "table.md"
    if flags["originals_only"]:
        accuracies = ", ".join(f"{100 * original['test_accuracy']:.2f}%" for original in originals)
        print(f"[reproduce] {grid.task}: {len(originals)} original(s), test accuracy {accuracies} → {table}")
    else:
        print(f"[reproduce] {grid.task}: {len(records)} runs → {table}")


if __name__ == "__main__":
    main()
