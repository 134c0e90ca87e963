"""A cross-validation grid carried to another machine: its originals are archived beside its table and
`resume_from` restores them with its finished runs (deepiot.cli.grid_archive)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import load_checkpoint
from deepiot.cli import harness, reproduce
from deepiot.cli.grid_archive import ORIGINAL_MODEL, restore_grid
from deepiot.cli.harness import Grid, run_grid
from deepiot.utils import ConfigError

TINY = (
    "data.dataset.limit=300",
    "trainer.epochs=1",
    "finetune.steps=4",
    "finetune.eval_every=2",
    "finetune.batch_size=32",
)


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def first_machine(tmp_path_factory):
    """A one-fold grid run to the end: its runs_dir and its CV table folder."""
    root = tmp_path_factory.mktemp("first")
    grid = Grid(
        task="deepsense_hapt_activity", methods=("magnitude", "random"), budgets=(0.2,), seeds=(0,), folds=(0,),
        runs_dir=root / "runs", results_dir=root / "results", latency_repeats=3, overrides=TINY,
    )  # fmt: skip
    records = run_grid(grid)
    GlobalHydra.instance().clear()
    return grid, records, root / "results" / "deepsense_hapt_activity" / "cv"


def second_grid(first: Grid, tmp_path) -> Grid:
    return Grid(**{**first.__dict__, "runs_dir": tmp_path / "runs"})


def test_the_table_folder_carries_each_fold_original(first_machine):
    grid, records, table = first_machine
    archived = table / "originals" / "fold0.pt"
    assert archived.read_bytes() == (grid.task_dir(0) / "original" / "train" / "model.pt").read_bytes()
    assert load_checkpoint(archived, kind="trained_model")["metrics"]["test_accuracy"] == (
        records[0]["original_test_accuracy"]
    )


def test_resume_from_restores_the_original_and_the_runs_and_runs_nothing_again(first_machine, tmp_path, monkeypatch):
    grid, records, table = first_machine
    here = second_grid(grid, tmp_path)
    assert restore_grid(here.task, here.runs_dir, table) == 2
    assert (here.task_dir(0) / ORIGINAL_MODEL).read_bytes() == (table / "originals" / "fold0.pt").read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a restored run or original was run again")

    monkeypatch.setattr(harness, "run_baseline", must_not_run)
    monkeypatch.setattr(harness, "ensure_trained", lambda cfg: here.task_dir(0) / ORIGINAL_MODEL)
    again = run_grid(here)  # the restored runs count as finished for the same grid in another runs_dir
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in records]
    assert all(f"paths.original_dir={here.task_dir(0) / 'original' / 'train'}" in r["overrides"] for r in again)
    assert restore_grid(here.task, here.runs_dir, table) == 0  # nothing left to restore


def test_resume_from_refuses_another_original_or_a_mixed_table(first_machine, tmp_path):
    grid, _, table = first_machine
    here = second_grid(grid, tmp_path)
    other = load_checkpoint(table / "originals" / "fold0.pt", kind="trained_model")
    first_weight = next(iter(other["state_dict"]))
    other["state_dict"][first_weight] = other["state_dict"][first_weight] + 1.0
    (here.task_dir(0) / ORIGINAL_MODEL).parent.mkdir(parents=True)
    torch.save(other, here.task_dir(0) / ORIGINAL_MODEL)
    with pytest.raises(ConfigError, match="another original than the one archived"):
        restore_grid(here.task, here.runs_dir, table)
    assert not (here.task_dir(0) / "equal").exists()  # checked before anything was written

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "originals").mkdir()
    (mixed / "originals" / "fold0.pt").write_bytes((table / "originals" / "fold0.pt").read_bytes())
    document = json.loads((table / "results.json").read_text())
    document["runs"][0]["original_test_accuracy"] += 0.01
    (mixed / "results.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="mixes originals"):
        restore_grid(grid.task, tmp_path / "elsewhere", mixed)
    with pytest.raises(ConfigError, match="holds the 'deepsense_hapt_activity' grid, not task=lstm_hapt_activity"):
        restore_grid("lstm_hapt_activity", tmp_path / "elsewhere", table)
    with pytest.raises(ConfigError, match="not a cross-validation table folder"):
        restore_grid(grid.task, tmp_path / "elsewhere", tmp_path)


def test_resume_from_is_a_command_line_key():
    grid, options = reproduce.parse(["task=lenet5_mnist", "resume_from=experiments/reproduce/x/cv"])
    assert str(options["resume_from"]) == "experiments/reproduce/x/cv" and grid.overrides == ()
