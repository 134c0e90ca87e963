"""Carry a cross-validation grid from one machine to another: its originals travel with its tables.

Training an original is bit-identical on one CPU model only. The same fold's DeepSense/HAPT user original,
trained with the same seed and config, reached 48.51% test on an AVX-512 machine and 50.09% on the one before,
so runs made on another machine cannot simply be topped up with runs made here: they would compress another
original and the paired differences would pair nothing. So `aggregate` copies each fold's original (model.pt)
beside the CV table (`<table folder>/originals/fold<k>.pt`), and `resume_from=<that table folder>`
(`restore_grid`) puts those originals and every finished run of its results.json back into a runs_dir, so the
grid goes on where it stopped, on any machine, and tables old and new runs together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepiot.checkpoint import load_checkpoint
from deepiot.utils import ConfigError, atomic_write

ORIGINALS_DIR = "originals"
ORIGINAL_MODEL = Path("original") / "train" / "model.pt"  # under <runs>/<task>/fold<k>/
RESULT_FILE = "result.json"


def run_folder(task_dir: Path, recipe: str, method: str, cost: str, budget: float, seed: int) -> Path:
    """A run's folder under its task's (fold's) folder: `<recipe>/<method>/<cost><budget>/seed<k>` (the one layout
    of the harness's runs and of the runs restored here)."""
    return task_dir / recipe / method / f"{cost}{budget:g}" / f"seed{seed}"


def archive_originals(task_runs: Path, out: Path) -> list[Path]:
    """Copy every fold original `<task_runs>/fold<k>/original/train/model.pt` to `<out>/originals/fold<k>.pt`
    (atomically, only when missing or different). Returns the archived paths."""
    archived = []
    for model in sorted(task_runs.glob(f"fold*/{ORIGINAL_MODEL}")):
        fold_name = model.relative_to(task_runs).parts[0]
        target = out / ORIGINALS_DIR / f"{fold_name}.pt"
        if not target.is_file() or target.read_bytes() != model.read_bytes():
            data = model.read_bytes()
            atomic_write(target, lambda file, data=data: file.write(data), binary=True)
        archived.append(target)
    return archived


def restore_grid(task: str, runs_dir: Path, source: Path) -> int:
    """`resume_from=<source>`: the originals and finished runs of a CV table folder (e.g. `<results>/<task>/cv/`,
    written by `aggregate`) into `<runs_dir>/<task>/`; returns how many runs were restored.

    Every check comes before any file is written: ConfigError when the folder is not a CV table of `task`, when a
    run's fold has no archived original or the run was made from another original (its recorded original test
    accuracy differs), or when runs_dir already holds another original for a fold (other weights). Runs already
    finished in runs_dir are left alone. The restored runs' overrides name this runs_dir, so the grid that made
    them counts them as finished and a grid with other settings refuses them as it refuses its own."""
    document = read_table(source, task)
    task_runs = runs_dir / task
    archived = {
        int(path.stem.removeprefix("fold")): path for path in (source / ORIGINALS_DIR).glob("fold*.pt")
    }
    originals = {fold: load_checkpoint(path, kind="trained_model") for fold, path in archived.items()}
    for fold, checkpoint in originals.items():
        present = task_runs / f"fold{fold}" / ORIGINAL_MODEL
        if present.is_file() and not same_weights(load_checkpoint(present, kind="trained_model"), checkpoint):
            raise ConfigError(
                f"{present} is another original than the one archived in {archived[fold]} (other weights: "
                "trained on another machine or with other settings); restore into an empty runs_dir, or delete "
                f"{present.parent.parent}."
            )
    records = [record for record in document["runs"] if record.get("fold") is not None]
    for record in records:
        check_record(record, originals, source)
    for fold, path in archived.items():
        target = task_runs / f"fold{fold}" / ORIGINAL_MODEL
        if not target.is_file():
            data = path.read_bytes()
            atomic_write(target, lambda file, data=data: file.write(data), binary=True)
    restored = 0
    for record in records:
        folder = run_folder(task_runs / f"fold{record['fold']}", record["recipe"], record["method"],
                            record["cost"], record["budget"], record["seed"])  # fmt: skip
        path = folder / RESULT_FILE
        if path.is_file():
            continue
        moved = {**record, "overrides": moved_overrides(record["overrides"], task, runs_dir)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file, moved=moved: file.write(json.dumps(moved, indent=2) + "\n"))
        restored += 1
    return restored


def read_table(source: Path, task: str) -> dict[str, Any]:
    """The results.json of a CV table folder of `task` (ConfigError otherwise)."""
    path = source / "results.json"
    if not path.is_file() or not (source / ORIGINALS_DIR).is_dir():
        raise ConfigError(
            f"resume_from={source} is not a cross-validation table folder with its originals: expected "
            f"{path} and {source / ORIGINALS_DIR}/fold<k>.pt (written by deepiot-reproduce with folds=...)."
        )
    document = json.loads(path.read_text())
    if document.get("task") != task:
        raise ConfigError(f"resume_from={source} holds the {document.get('task')!r} grid, not task={task}.")
    return document


def check_record(record: Mapping[str, Any], originals: Mapping[int, Mapping[str, Any]], source: Path) -> None:
    """A run can be restored when its fold's original is archived and is the one it compressed."""
    fold = record["fold"]
    if fold not in originals:
        raise ConfigError(
            f"{source}: runs of fold {fold} but no {ORIGINALS_DIR}/fold{fold}.pt to restore them with."
        )
    archived_accuracy = float(originals[fold]["metrics"]["test_accuracy"])
    if record["original_test_accuracy"] != archived_accuracy:
        raise ConfigError(
            f"{source}: the {record['method']} run of fold {fold} at {record['budget']:g} compressed an original "
            f"with {100 * record['original_test_accuracy']:.2f}% test accuracy, the archived fold{fold}.pt has "
            f"{100 * archived_accuracy:.2f}%: the table mixes originals and cannot be resumed."
        )


def same_weights(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two trained-model checkpoints hold the same weights, bit for bit."""
    a, b = first["state_dict"], second["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def moved_overrides(overrides: list[str], task: str, runs_dir: Path) -> list[str]:
    """A run's overrides with the runs_dir it ran in replaced by `runs_dir` (paths.original_dir, method.plan)."""
    marker = f"/{task}/fold"
    moved = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("paths.original_dir", "method.plan") and marker in value:
            value = str(runs_dir) + marker + value.split(marker, 1)[1]
            override = f"{key}={value}"
        moved.append(override)
    return moved
