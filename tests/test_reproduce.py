"""The reproduction harness end to end on a tiny grid (DeepIoT + magnitude, 1 budget, 2 seeds), skip-on-rerun,
the deepiot-baseline config and recipes, and a CV grid resumed on another machine (resume_from)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import load_checkpoint
from deepiot.cli import harness, reproduce
from deepiot.cli.baseline import compose_baseline_config, finetune_config, run_baseline
from deepiot.cli.grid_archive import ORIGINAL_MODEL, restore_grid
from deepiot.cli.harness import Grid, run_grid
from deepiot.compression.state import SCRATCH_STATE_FILE
from deepiot.device import host
from deepiot.device.host import cpu_description
from deepiot.export import ExportError
from deepiot.utils import ConfigError

TINY = (
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "finetune.steps=4",
    "finetune.eval_every=2",
    "finetune.batch_size=32",
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "compress.batch_size=32",
)


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def tiny_grid(tmp_path, **changes) -> Grid:
    values = {
        "task": "lenet300_mnist",
        "methods": ("deepiot", "magnitude"),
        "budgets": (0.2,),
        "seeds": (0, 1),
        "runs_dir": tmp_path / "runs",
        "results_dir": tmp_path / "results",
        "latency_repeats": 3,
        "overrides": (*TINY, f"paths.original_dir={tmp_path / 'train'}"),
    }
    return Grid(**{**values, **changes})


def test_harness_runs_the_grid_aggregates_and_skips_finished_runs(tmp_path, monkeypatch):
    grid = tiny_grid(tmp_path)
    records = run_grid(grid)
    assert sorted((r["method"], r["seed"]) for r in records) == [
        ("deepiot", 0),
        ("deepiot", 1),
        ("magnitude", 0),
        ("magnitude", 1),
    ]
    magnitude = [r for r in records if r["method"] == "magnitude"]
    assert all(r["params_left"] <= 0.2 and r["latency_ms"] > 0 for r in magnitude)
    assert all(
        r["original_test_accuracy"] == records[0]["original_test_accuracy"] for r in records
    )  # one original
    table = (tmp_path / "results" / "lenet300_mnist" / "table.md").read_text()
    assert (
        "| equal | magnitude | 20% params | 2 |" in table and "| equal | deepiot | 20% params | 2 |" in table
    )
    assert (
        "The paper (docs/paper.md) reports no result for this task." in table
    )  # docs/paper.md has no LeNet-300-100
    assert (tmp_path / "results" / "lenet300_mnist" / "pareto_equal.png").stat().st_size > 0

    def must_not_run(cfg):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(harness, "run_baseline", must_not_run)
    assert run_grid(grid) == records

    with pytest.raises(ValueError, match="written by a run with other overrides"):
        run_grid(tiny_grid(tmp_path, overrides=(*grid.overrides, "finetune.lr=0.01")))


def test_a_run_interrupted_before_its_result_is_rerun(tmp_path):
    grid = tiny_grid(tmp_path, methods=("magnitude",), seeds=(0,))
    run = grid.runs()[0]
    run_grid(grid)
    first = json.loads((run.folder / harness.RESULT_FILE).read_text())
    (run.folder / harness.RESULT_FILE).unlink()  # as if killed before result.json was written
    again = run_grid(grid)
    assert again[0]["test_accuracy"] == first["test_accuracy"]  # fine-tuning resumed from its finished state


def test_latencies_measured_elsewhere_are_measured_again_here(tmp_path):
    grid = tiny_grid(tmp_path, methods=("magnitude",), seeds=(0,))
    run_grid(grid)
    path = grid.runs()[0].folder / harness.RESULT_FILE
    record = json.loads(path.read_text())
    path.write_text(
        json.dumps({**record, "latency_ms": 1234.0, "latency_left": 99.0})
    )  # as from another host
    assert harness.remeasure_latencies(grid) == 1
    again = json.loads(path.read_text())
    original = json.loads((grid.task_dir(None) / "original" / harness.RESULT_FILE).read_text())
    assert 0 < again["latency_ms"] < 1234.0 and again["latency_host"] == original["latency_host"]
    assert again["latency_left"] == pytest.approx(again["latency_ms"] / original["latency_ms"])
    assert again["test_accuracy"] == record["test_accuracy"]  # nothing but the latency changes


def test_a_failing_run_does_not_stop_the_grid(tmp_path, monkeypatch):
    grid = tiny_grid(tmp_path, methods=("magnitude",))
    real_run_baseline = harness.run_baseline

    def fails_for_seed_0(cfg):
        if cfg.run_seed == 0:
            raise ExportError("exported model differs from PyTorch (as a run may fail for its own reasons)")
        return real_run_baseline(cfg)

    monkeypatch.setattr(harness, "run_baseline", fails_for_seed_0)
    with pytest.raises(
        harness.GridError, match=r"(?s)1 of 2 runs .* failed.*seed0: ExportError: exported model"
    ):
        run_grid(grid)
    seed0, seed1 = (run.folder / harness.RESULT_FILE for run in grid.runs())
    assert not seed0.exists() and seed1.is_file()  # the run after the failure ran
    summary = json.loads((tmp_path / "results" / "lenet300_mnist" / "results.json").read_text())["summary"]
    assert [row["seeds"] for row in summary] == [1]  # what finished was aggregated
    monkeypatch.setattr(harness, "run_baseline", real_run_baseline)
    assert [record["seed"] for record in run_grid(grid)] == [0, 1]  # rerunning retries the failed run only


def test_a_configuration_error_stops_the_grid_at_once(tmp_path, monkeypatch):
    grid = tiny_grid(tmp_path, methods=("magnitude",))
    calls = []

    def bad_config(cfg):
        calls.append(cfg.run_seed)
        raise ConfigError("finetune.steps must be positive")

    monkeypatch.setattr(harness, "run_baseline", bad_config)
    with pytest.raises(ConfigError, match="finetune.steps"):
        run_grid(grid)
    assert calls == [0]


def test_recipes_equal_and_best(tmp_path):
    base = [f"paths.output_dir={tmp_path}"]
    equal = finetune_config(compose_baseline_config([*base, "method=magnitude"]))
    best = finetune_config(compose_baseline_config([*base, "method=magnitude", "recipe=best"]))
    assert (equal.steps, equal.lr, equal.schedule, equal.distill_weight) == (3000, 1e-3, "cosine", 0.5)
    assert best.distill_weight == 0.5 and best.steps == equal.steps
    assert finetune_config(compose_baseline_config([*base, "method=deepiot", "recipe=best"])) is None


def test_run_baseline_refuses_torch_pruning_on_a_recurrent_model(tmp_path):
    cfg = compose_baseline_config(
        [
            "experiment=lstm_hapt_activity",
            "method=torch_pruning",
            "data.dataset.limit=64",
            "trainer.epochs=1",
            "model.hidden_size=8",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.original_dir={tmp_path / 'train'}",
        ]
    )
    with pytest.raises(ValueError, match="recurrent layers"):
        run_baseline(cfg)


def test_paper_rows_in_another_metric_are_tabled_not_plotted(tmp_path):
    record = {"recipe": "equal", "method": "magnitude", "cost": "params", "budget": 0.1, "sparse": False}
    summary = harness.summarise([record | dict.fromkeys(harness.SUMMARY_KEYS, 0.5)])
    original = {"test_accuracy": 0.9, "latency_ms": 1.0}
    text = harness.table("lstm_hapt_activity", summary, original)
    assert "| DeepIoT (paper, LibriSpeech 5-layer bi-LSTM) | 9.98% | WER 9.20 (9.31) |" in text
    assert "| equal | magnitude | 10% params | 1 | 50.00% |" in text
    harness.plot_pareto("lstm_hapt_activity", summary, original, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_fold_runs_have_their_own_folders_originals_and_order(tmp_path):
    grid = tiny_grid(tmp_path, methods=("scratch", "magnitude", "deepiot"), seeds=(0,), folds=(0, 1))
    runs = grid.runs()
    assert [(run.fold, run.method) for run in runs] == [
        (0, "deepiot"), (0, "magnitude"), (0, "scratch"), (1, "deepiot"), (1, "magnitude"), (1, "scratch"),
    ]  # fmt: skip
    assert (
        runs[0].folder
        == tmp_path / "runs" / "lenet300_mnist" / "fold0" / "equal" / "deepiot" / "params0.2" / "seed0"
    )
    assert "data.dataset.fold=0" in runs[0].overrides
    assert (
        f"paths.original_dir={tmp_path / 'runs' / 'lenet300_mnist' / 'fold0' / 'original' / 'train'}"
        in runs[0].overrides
    )
    scratch = runs[2]
    assert (
        f"method.plan={runs[0].folder / 'slicing_plan.json'}" in scratch.overrides
    )  # DeepIoT's architecture
    assert harness.parse_folds("0-2,4") == (0, 1, 2, 4) and harness.parse_folds("") == ()


def test_a_scratch_run_takes_over_deepiots_own_training_from_scratch_bit_for_bit(tmp_path):
    overrides = (*TINY, f"paths.original_dir={tmp_path / 'train'}", "compress.try_scratch=true")
    grid = tiny_grid(tmp_path, methods=("deepiot", "scratch"), seeds=(0,), overrides=overrides)
    source, run = grid.runs()
    taken = {record["method"]: record for record in run_grid(grid)}["scratch"]
    assert taken["training_reused_from"] == str(source.folder)
    shared = load_checkpoint(run.folder / "finetune_state.pt", kind="finetune_state")

    shutil.rmtree(run.folder)  # trained again, with no DeepIoT training to take over
    (source.folder / SCRATCH_STATE_FILE).unlink()
    trained = {record["method"]: record for record in run_grid(grid)}["scratch"]
    assert trained["training_reused_from"] is None
    own = load_checkpoint(run.folder / "finetune_state.pt", kind="finetune_state")
    assert own["best_state_dict"].keys() == shared["best_state_dict"].keys()
    assert all(
        torch.equal(own["best_state_dict"][key], shared["best_state_dict"][key])
        for key in own["best_state_dict"]
    )
    assert (trained["test_accuracy"], trained["val_accuracy"]) == (
        taken["test_accuracy"],
        taken["val_accuracy"],
    )


def test_a_scratch_run_trains_itself_when_deepiots_training_used_another_recipe_or_seed(tmp_path):
    overrides = (*TINY, f"paths.original_dir={tmp_path / 'train'}", "compress.try_scratch=true")
    grid = tiny_grid(tmp_path, methods=("deepiot",), seeds=(0,), overrides=overrides)
    run_grid(grid)
    scratch = harness.Run(grid, "equal", "scratch", 0.2, 0)
    cfg = compose_baseline_config([*scratch.overrides, f"paths.output_dir={scratch.folder}"])
    state = grid.runs()[0].folder / SCRATCH_STATE_FILE
    saved = torch.load(state, weights_only=False)
    torch.save({**saved, "config": {**saved["config"], "lr": saved["config"]["lr"] * 2}}, state)
    assert harness.reuse_scratch_training(scratch, cfg) is None  # another recipe
    torch.save(saved, state)
    cfg_seed = compose_baseline_config(
        [*scratch.overrides, "run_seed=1", f"paths.output_dir={scratch.folder}"]
    )
    assert harness.reuse_scratch_training(scratch, cfg_seed) is None  # another initialisation seed
    assert harness.reuse_scratch_training(scratch, cfg) == grid.runs()[0].folder
    assert (scratch.folder / "finetune_state.pt").read_bytes() == state.read_bytes()


def test_a_scratch_suffixed_method_runs_the_method_with_try_scratch_in_its_own_folder(tmp_path):
    grid = tiny_grid(tmp_path, methods=("uniform+scratch", "uniform"), seeds=(0,))
    alternative, plain = sorted(grid.runs(), key=lambda run: run.method != "uniform+scratch")
    assert (
        alternative.folder.parent.parent.name == "uniform+scratch"
        and plain.folder.parent.parent.name == "uniform"
    )
    assert "method=uniform" in alternative.overrides and "method.try_scratch=true" in alternative.overrides
    assert not any("try_scratch" in override for override in plain.overrides)
    harness.check_grid(grid)  # both compose and pass deepiot-baseline's checks
    with pytest.raises(ValueError, match="unknown method"):
        tiny_grid(tmp_path, methods=("scratch+scratch",))


def test_originals_only_trains_and_tables_the_original_and_runs_no_method(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("originals_only ran a method or trained an original twice")

    grid = tiny_grid(tmp_path, methods=("magnitude",), seeds=(0,))
    assert reproduce.parse(["task=lenet300_mnist", "originals_only=true"])[1]["originals_only"] is True
    monkeypatch.setattr(harness, "execute", must_not_run)
    (original,) = harness.train_originals(grid)
    assert 0.1 < original["test_accuracy"] <= 1 and original["fold"] is None
    assert not (tmp_path / "runs" / "lenet300_mnist" / "equal").exists()
    table = (tmp_path / "results" / "lenet300_mnist" / "table.md").read_text()
    assert f"Original: test accuracy {100 * original['test_accuracy']:.2f}%" in table
    monkeypatch.setattr(harness, "ensure_trained", must_not_run)
    assert harness.train_originals(grid) == [original]  # loaded, not trained again


def cv_record(method: str, fold: int, seed: int, accuracy: float) -> dict:
    return {
        "recipe": "equal", "method": method, "cost": "params", "budget": 0.03, "fold": fold, "seed": seed,
        "sparse": False, "params": 9000, "test_accuracy": accuracy, "params_left": 0.03, "macs_left": 0.04,
        "model_bytes_left": 0.03, "latency_ms": 0.1, "latency_left": 0.2,
    }  # fmt: skip


def test_cv_summary_pairs_methods_by_fold_and_tables_the_intervals():
    deepiot = {0: 0.90, 1: 0.80, 2: 0.95}
    records = [cv_record("deepiot", fold, 0, accuracy) for fold, accuracy in deepiot.items()]
    records[0]["element_choice"] = {"mode": "auto", "chosen": "l1", "scratch": {"chosen": "handed_on"}}
    records[1]["element_choice"] = {"mode": "auto", "chosen": "l1", "scratch": {"chosen": "scratch"}}
    records[2]["element_choice"] = {"mode": "critic", "chosen": "critic"}
    # magnitude: two seeds per fold averaging exactly 2 points below DeepIoT on every fold
    records += [cv_record("magnitude", fold, seed, accuracy - 0.02 + (0.01 if seed else -0.01))
                for fold, accuracy in deepiot.items() for seed in (0, 1)]  # fmt: skip
    summary = {row["method"]: row for row in harness.summarise_folds(records, {0: 0.91, 1: 0.81, 2: 0.96})}
    assert summary["magnitude"]["folds"] == [0, 1, 2] and summary["magnitude"]["seeds"] == 6
    assert summary["magnitude"]["test_accuracy"] == pytest.approx(sum(deepiot.values()) / 3 - 0.02)
    difference = summary["magnitude"]["diff_vs_reference"]
    assert difference["mean"] == pytest.approx(-0.02) and difference["significant"] is True
    assert summary["deepiot"]["diff_vs_reference"] is None
    assert summary["deepiot"]["diff_vs_original"]["mean"] == pytest.approx(
        -0.01
    )  # 1 point below on every fold
    low, high = summary["deepiot"]["test_accuracy_low"], summary["deepiot"]["test_accuracy_high"]
    assert low < summary["deepiot"]["test_accuracy"] < high
    original = harness.summarise_originals(
        [{"fold": fold, "test_accuracy": 0.95, "latency_ms": 0.4} for fold in range(3)]
    )
    table = harness.cv_table("task", list(summary.values()), original)
    assert "| equal | magnitude | 3% params | 3 | 6 | 9,000 | 3.00% | 4.00% |" in table
    assert "| -2.00 [-2.00, -2.00] * | -3.00 [-3.00, -3.00] * |" in table
    assert "fold 0: 95.00%" in table
    assert (
        summary["deepiot"]["starts"] == {"critic": 1, "l1": 1, "scratch": 1}
        and summary["magnitude"]["starts"] == {}
    )
    assert "- equal deepiot 3% params: critic 1, l1 1, scratch 1" in table
    baseline = [
        cv_record("uniform+scratch", fold, 0, 0.9) for fold in range(3)
    ]  # method.try_scratch's record
    for record, chosen in zip(baseline, ("scratch", "handed_on", "scratch"), strict=True):
        record["element_choice"] = {
            "scratch": {"chosen": chosen, "val_accuracy": {"handed_on": 0.8, "scratch": 0.8}}
        }
    (row,) = harness.summarise_folds(baseline, {0: 0.91, 1: 0.81, 2: 0.96})
    assert row["starts"] == {"handed_on": 1, "scratch": 2}


def test_cv_glance_pivots_budgets_by_method_and_counts_where_deepiot_stands():
    deepiot = {0: 0.90, 1: 0.80, 2: 0.95}
    records = [cv_record("deepiot", fold, 0, accuracy) for fold, accuracy in deepiot.items()]
    # uniform 2 points behind on every fold (significant); scratch +1, -1, 0 (not separable); random 3 ahead
    records += [cv_record("uniform", fold, 0, accuracy - 0.02) for fold, accuracy in deepiot.items()]
    records += [
        cv_record("scratch", fold, 0, deepiot[fold] + shift)
        for fold, shift in ((0, 0.01), (1, -0.01), (2, 0))
    ]
    records += [cv_record("random", fold, 0, accuracy + 0.03) for fold, accuracy in deepiot.items()]
    summary = harness.summarise_folds(records, None)
    lines = harness.cv_glance(summary)
    assert "| budget | deepiot | random | scratch | uniform | ahead / even / behind |" in lines
    assert "| 3% params | 88.33 | 91.33 (+3.00*) | 88.33 (+0.00) | 86.33 (-2.00*) | 1 / 1 / 1 |" in lines
    assert harness.cv_glance([row for row in summary if row["method"] != "deepiot"]) == []


def test_the_cpu_description_names_the_model_and_torchs_kernel_level(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n"
    )
    monkeypatch.setattr(host, "CPUINFO", cpuinfo)
    level = torch.backends.cpu.get_cpu_capability()
    assert host.cpu_description() == f"AMD EPYC 7B13 64-Core Processor ({level})"
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "absent")  # not Linux: platform's name
    assert host.cpu_description().endswith(f" ({level})") and len(host.cpu_description()) > len(level) + 3


def test_a_table_whose_runs_ran_on_several_cpus_names_them_per_budget():
    records = [cv_record("deepiot", fold, 0, 0.9) | {"cpu": "Intel Xeon (AVX512)"} for fold in range(3)]
    records += [cv_record("uniform", fold, 0, 0.9) | {"cpu": "AMD EPYC (AVX2)"} for fold in (0, 1)]
    records += [cv_record("uniform", 2, 0, 0.9)]  # made before runs recorded their CPU
    records += [
        cv_record("deepiot", fold, 0, 0.9) | {"budget": 0.1, "cpu": "AMD EPYC (AVX2)"} for fold in range(3)
    ]
    summary = harness.summarise_folds(records, None)
    assert {row["method"]: row["cpus"] for row in summary if row["budget"] == 0.03} == {
        "deepiot": {"Intel Xeon (AVX512)": 3},
        "uniform": {"AMD EPYC (AVX2)": 2, harness.UNRECORDED_CPU: 1},
    }
    table = harness.cv_table("task", summary, None)
    assert "- 3% params: AMD EPYC (AVX2) 2, CPU not recorded 1, Intel Xeon (AVX512) 3" in table
    assert "- 10% params: AMD EPYC (AVX2) 3" in table
    one_machine = [record for record in records if record["budget"] == 0.1]
    assert "more than one machine" not in harness.cv_table("task", harness.summarise_folds(one_machine), None)
    assert "more than one machine" not in harness.table("task", harness.summarise(one_machine), None)


# --- a CV grid carried to another machine: its originals archived beside its table, resume_from restores them
# with its finished runs (deepiot.cli.grid_archive)


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


def test_a_grid_refuses_a_fold_original_trained_with_another_config(first_machine):
    grid, _, _ = first_machine  # its runs_dir holds fold 0's original, trained with trainer.epochs=1
    other = Grid(**{**grid.__dict__, "methods": ("uniform",), "overrides": (*TINY, "trainer.epochs=2")})
    with pytest.raises(ConfigError, match="was trained with another config.*trainer.epochs"):
        harness.check_grid(other)  # before anything runs: no run of it is finished, the original is the trap
    with pytest.raises(ConfigError, match="was trained with another config"):
        harness.original_reference(other, 0)  # its result.json is there, but is not this grid's original
    assert not (other.task_dir(0) / "equal" / "uniform").exists()


def test_the_tables_of_two_fold_protocols_of_one_task_never_overwrite_each_other(first_machine, tmp_path):
    grid, records, table = first_machine  # the data config's own folds: <results>/<task>/cv
    assert table == grid.folds_results_dir and (table / "table.md").is_file()
    assert {record["cpu"] for record in records} == {cpu_description()}  # each run names where it ran
    timed = Grid(
        **{**grid.__dict__, "results_dir": tmp_path, "overrides": (*TINY, "data.dataset.split=time_folds")}
    )
    assert len(harness.aggregate(timed)) == len(records)
    timed_table = (
        tmp_path / grid.task / "time_folds" / "table.md"
    ).read_text()  # named by the split it names
    assert timed_table.startswith(f"# {grid.task}: cross-validation (time folds)\n")
    assert (
        (table / "table.md")
        .read_text()
        .startswith(f"# {grid.task}: cross-validation (the data config's folds)")
    )
    assert (tmp_path / grid.task / "time_folds" / "originals" / "fold0.pt").is_file()
    assert not (tmp_path / grid.task / "cv").exists()


def test_the_table_folder_carries_each_fold_original(first_machine):
    grid, records, table = first_machine
    archived = table / "originals" / "fold0.pt"
    assert archived.read_bytes() == (grid.task_dir(0) / "original" / "train" / "model.pt").read_bytes()
    assert (
        load_checkpoint(archived, kind="trained_model")["metrics"]["test_accuracy"]
        == (records[0]["original_test_accuracy"])
    )


def test_resume_from_restores_the_original_and_the_runs_and_runs_nothing_again(
    first_machine, tmp_path, monkeypatch
):
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
    assert all(
        f"paths.original_dir={here.task_dir(0) / 'original' / 'train'}" in r["overrides"] for r in again
    )
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
    with pytest.raises(
        ConfigError, match="holds the 'deepsense_hapt_activity' grid, not task=lstm_hapt_activity"
    ):
        restore_grid("lstm_hapt_activity", tmp_path / "elsewhere", table)
    with pytest.raises(ConfigError, match="not a cross-validation table folder"):
        restore_grid(grid.task, tmp_path / "elsewhere", tmp_path)


def test_resume_from_is_a_command_line_key():
    grid, options = reproduce.parse(["task=lenet5_mnist", "resume_from=experiments/reproduce/x/cv"])
    assert str(options["resume_from"]) == "experiments/reproduce/x/cv" and grid.overrides == ()
