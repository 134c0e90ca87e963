"""Bad input on deepiot-baseline, scripts/reproduce.py, deepiot-export int8, deepiot-profile,
scripts/edge_table.py, scripts/compare_criteria.py and the launchers: one `<program>: error: ...` paragraph naming the bad key and what was
expected, exit status 2, no traceback, before any long work and before any file is written (the rest of the
battery is test_bad_input_battery.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from deepiot.cli import reported_errors
from deepiot.cli.baseline import compose_baseline_config, run_baseline


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


BASELINE_CASES = {
    "device=cuda": (["device=cuda"], r"trainer.device='cuda' cannot be used here: .*CUDA device"),
    "device=tpu": (["device=tpu"], r"trainer.device='tpu' is not a torch device: expected e.g. cpu"),
    "budget.fraction=abc": (
        ["budget.fraction=abc"],
        r"config value budget.fraction='abc' is invalid: expected .* a number in \(0, 1\]",
    ),
    "budget.fraction=1.5": (["budget.fraction=1.5"], r"budget.fraction=1.5 is invalid: expected"),
    "budget.fraction=0": (["budget.fraction=0"], r"budget.fraction=0 is invalid: expected"),
    "budget.limit=0": (
        ["budget.cost=model_kb", "budget.limit=0"],
        r"budget.limit=0 is invalid: expected a number > 0 \(KiB for budget.cost=model_kb\)",
    ),
    "budget.cost=energy": (
        ["budget.cost=energy"],
        r"budget.cost='energy' is invalid: expected params or macs",
    ),
    "method.fraction=1.5": (
        ["method.fraction=1.5"],
        r"config value method.fraction=1.5 is invalid: expected null .* a number in \(0, 1\]",
    ),
    "method.fraction=0": (["method=random", "method.fraction=0"], r"method.fraction=0 is invalid"),
    "method.counts=3": (["method.counts=3"], r"method.counts=3 is invalid: expected null .* integers >= 1"),
    "method.normalizer": (
        ["method.normalizer=median"],
        r"method.normalizer='median' is invalid: expected mean",
    ),
    "unstructured macs": (
        ["method=unstructured", "budget.cost=macs"],
        "method unstructured prunes single weights to a params budget: expected budget.cost=params",
    ),
    "recipe": (["recipe=fancy"], "recipe must be one of equal, best, got 'fancy'"),
    "deepiot critic.lr": (["method=deepiot", "critic.lr=-1"], "critic.lr"),
    "element_choice": (
        ["method=deepiot", "compress.element_choice=best"],
        "compress.element_choice must be one of",
    ),
    "choice_steps=0": (
        ["method=deepiot", "compress.choice_steps=0"],
        "compress.choice_steps must be a positive",
    ),
    "choice_steps=abc": (["method=deepiot", "compress.choice_steps=abc"], "compress.choice_steps"),
    "min_kept=0": (["method=deepiot", "compress.min_kept=0"], "compress.min_kept must be a positive"),
    "min_kept=abc": (["method=deepiot", "compress.min_kept=abc"], "compress.min_kept"),
    "min_kept=[]": (["method=deepiot", "compress.min_kept=[]"], "compress.min_kept"),
    "try_scratch=maybe": (
        ["method=deepiot", "compress.try_scratch=maybe"],
        r"compress.try_scratch='maybe' has the wrong type: expected true or false",
    ),
    "mask_scale": (["method=deepiot", "critic.mask_scale=half"], "critic.mask_scale must be one of"),
    # budgets the architecture cannot meet: found on an untrained model of it, before the original is trained
    "min_kept over the budget": (
        ["method=deepiot", "compress.min_kept=40", "budget.fraction=0.01"],
        r"compress.min_kept=40 cannot be met at compress.target_params=0.01: 40 elements in every group",
    ),
    "model_kb met by the original": (
        ["method=deepiot", "budget.cost=model_kb", "budget.limit=5000"],
        r"compress.target_model_kb=5000: the original model already fits",
    ),
    "baseline try_scratch=maybe": (
        ["method=uniform", "method.try_scratch=maybe"],
        r"method.try_scratch='maybe' is invalid: expected true or false",
    ),
    "try_scratch on scratch": (
        ["method=scratch", "+method.try_scratch=true"],
        "method.try_scratch=true applies to the methods that fine-tune the original's weights",
    ),
}


@pytest.mark.parametrize("case_id", list(BASELINE_CASES))
def test_deepiot_baseline_refuses_bad_settings_before_training(case_id, tmp_path, capsys):
    overrides, pattern = BASELINE_CASES[case_id]
    cfg = compose_baseline_config(
        [*overrides, f"paths.output_dir={tmp_path / 'run'}", f"paths.original_dir={tmp_path / 'original'}"]
    )
    with pytest.raises(SystemExit) as stopped, reported_errors("deepiot-baseline"):
        run_baseline(cfg)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("deepiot-baseline: error: ") and err.count("error:") == 1, err
    assert re.search(pattern, err), (pattern, err)
    assert files_under(tmp_path) == []  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------------- scripts/reproduce.py

REPRODUCE_CASES = {
    "task=nosuch": (["task=nosuch"], r"task='nosuch' is not an experiment: expected one of .*lenet5_mnist"),
    "seeds=a,b": (["seeds=a,b"], r"seeds='a,b' is invalid: expected comma-separated integers >= 0"),
    "seeds=-1": (["seeds=-1"], r"seeds=\[-1\] is invalid: expected integers >= 0"),
    "seeds=": (["seeds="], "seeds is empty: expected at least one value"),
    "methods=foo": (
        ["methods=foo"],
        r"unknown method\(s\) \['foo'\]; choose from deepiot, deepiot_inverted, magnitude",
    ),
    "methods=": (["methods="], "methods is empty: expected at least one value"),
    "recipes=foo": (["recipes=foo"], "recipes must be among equal, best, got"),
    "cost=energy": (["cost=energy"], "cost must be params or macs .* got 'energy'"),
    "budgets=abc": (["budgets=abc"], "budgets='abc' is invalid: expected comma-separated numbers"),
    "budgets=0": (
        ["budgets=0"],
        r"budgets=0 is invalid: expected fractions of the original's params left, in \(0, 1\]",
    ),
    "budgets=1.5": (["budgets=0.1,1.5"], r"budgets=0.1,1.5 is invalid: expected fractions"),
    "budgets=-0.02": (["budgets=-0.02"], "budgets=-0.02 is invalid"),
    "cost=model_kb budgets=0": (
        ["cost=model_kb", "budgets=0"],
        r"budgets=0 is invalid: expected numbers > 0 \(KiB for cost=model_kb\)",
    ),
    "latency_repeats=x": (["latency_repeats=x"], "latency_repeats='x' is invalid: expected an integer >= 1"),
    "latency_repeats=0": (["latency_repeats=0"], "latency_repeats=0 is invalid: expected an integer >= 1"),
    "remeasure_latency=maybe": (
        ["remeasure_latency=maybe"],
        "remeasure_latency='maybe' is invalid: expected true or false",
    ),
    "originals_only=maybe": (
        ["originals_only=maybe"],
        "originals_only='maybe' is invalid: expected true or false",
    ),
    "originals_only, bad grid": (
        ["originals_only=true", "seeds=-1"],
        r"seeds=\[-1\] is invalid: expected integers >= 0",
    ),
    "resume_from=": (["resume_from="], "resume_from is empty: expected a CV table folder"),
    "resume_from missing": (
        ["resume_from={tmp}/nosuch"],
        r"resume_from=.*nosuch is not a cross-validation table folder with its originals",
    ),
    "resume_from a file": (["resume_from={tmp}/occupied"], "is not a cross-validation table folder"),
    "methods=scratch+scratch": (["methods=scratch+scratch"], r"unknown method\(s\) \['scratch\+scratch'\]"),
    "method.try_scratch=maybe": (
        ["methods=uniform", "method.try_scratch=maybe"],
        r"method.try_scratch='maybe' is invalid: expected true or false",
    ),
    "latency without profile": (
        ["cost=latency_ms", "budgets=0.1"],
        "a latency_ms budget needs a device profile",
    ),
    "unknown override": (["finetune.stepz=3"], r"do not compose: Could not override 'finetune.stepz'"),
    "bad override value": (
        ["trainer.lr=abc"],
        r"config value trainer.lr='abc' is invalid: expected a number > 0",
    ),
    "method override": (["methods=random", "method.fraction=1.5"], r"method.fraction=1.5 is invalid"),
    "runs_dir is a file": (
        ["runs_dir={tmp}/occupied"],
        "runs_dir=.*occupied cannot be created: .* is an existing file",
    ),
    "no key=value": (["foo"], "expected key=value, got 'foo'"),
    "moved setting": (
        ["trainer.num_threads=1"],
        r"trainer\.num_threads is no longer a setting: it is the root key num_threads now.* use num_threads=<value>",
    ),
}


def load_reproduce_script():
    import deepiot.cli.reproduce

    return deepiot.cli.reproduce


@pytest.mark.parametrize("case_id", list(REPRODUCE_CASES))
def test_reproduce_refuses_a_bad_grid_before_any_work(case_id, tmp_path, capsys, monkeypatch):
    arguments, pattern = REPRODUCE_CASES[case_id]
    (tmp_path / "occupied").write_text("someone's file\n")
    folders = [f"runs_dir={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}"]
    folders += [f"paths.original_dir={tmp_path / 'original'}"]
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    task = [] if any(argument.startswith("task=") for argument in arguments) else ["task=lenet5_mnist"]
    monkeypatch.setattr("sys.argv", ["reproduce.py", *task, *folders, *arguments])
    script = load_reproduce_script()
    monkeypatch.setattr(script, "run_grid_on", lambda grid, **launch: pytest.fail("the grid ran"))
    with pytest.raises(SystemExit) as stopped:
        script.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("deepiot-reproduce: error: ") and err.count("error:") == 1, err
    assert re.search(pattern, err), (pattern, err)
    assert files_under(tmp_path) == ["occupied"]  # no original, run folder or result written


def test_harness_checks_every_run_before_the_original_is_trained(tmp_path):
    """A run folder finished with other overrides is found before the original is trained or a run is made."""
    from deepiot.cli import harness
    from deepiot.utils import ConfigError

    grid = harness.Grid(
        task="lenet5_mnist",
        methods=("magnitude", "random"),
        budgets=(0.1,),
        seeds=(0,),
        runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "results",
        overrides=(f"paths.original_dir={tmp_path / 'original'}",),
    )
    last = grid.runs()[-1]
    last.folder.mkdir(parents=True)
    (last.folder / harness.RESULT_FILE).write_text('{"overrides": ["experiment=other"]}\n')
    before = files_under(tmp_path)
    with pytest.raises(ConfigError, match="was written by a run with other overrides"):
        harness.run_grid(grid)
    assert files_under(tmp_path) == before  # the original was not trained, the first run not made


def test_runs_finished_before_the_process_settings_moved_still_count_as_finished(tmp_path):
    """result.json files of older runs record trainer.num_threads=1 and trainer.progress_bar=false: the harness
    reads them under the root keys, so the same grid skips those runs; other differences are still refused."""
    from deepiot.cli import harness

    original = f"paths.original_dir={tmp_path / 'original'}"
    grid = harness.Grid(task="lenet5_mnist", methods=("magnitude",), budgets=(0.1,), seeds=(0,),
                        runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", overrides=(original,))  # fmt: skip
    run = grid.runs()[0]
    recorded = ["experiment=lenet5_mnist", "method=magnitude", "budget.cost=params", "budget.fraction=0.1",
                "recipe=equal", "run_seed=0", "trainer.num_threads=1", "trainer.progress_bar=false",
                "compress.latency_threads=null", original]  # fmt: skip
    run.folder.mkdir(parents=True)
    (run.folder / harness.RESULT_FILE).write_text(json.dumps({"overrides": recorded}))
    assert harness.finished(run)
    harness.check_grid(grid)
    recorded[6] = "trainer.num_threads=2"
    (run.folder / harness.RESULT_FILE).write_text(json.dumps({"overrides": recorded}))
    with pytest.raises(ValueError, match=r"other overrides \(\[.*'num_threads=2'"):
        harness.finished(run)


def test_a_run_finished_before_a_config_file_changed_is_refused_not_skipped(tmp_path, caplog):
    """result.json records the run's settings as the config files gave them: a finished run whose recorded value
    of a key differs from what the files give now (an experiment file edited since) is a ConfigError naming the
    key and both values, where the overrides alone would have skipped it as finished; keys only one side has
    (added or removed since) and runs recorded without settings still count as finished, the latter with a
    warning that names them as unchecked."""
    from deepiot.cli import harness
    from deepiot.utils import ConfigError

    original = f"paths.original_dir={tmp_path / 'original'}"
    grid = harness.Grid(task="lenet5_mnist", methods=("deepiot",), budgets=(0.1,), seeds=(0,),
                        runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", overrides=(original,))  # fmt: skip
    run = grid.runs()[0]
    settings = harness.run_settings(harness.compose_baseline_config([*run.overrides, "paths.output_dir=x"]))
    assert settings["compress.min_kept"] == 1 and not any(
        key.startswith(("paths.", "budget.")) for key in settings
    )
    run.folder.mkdir(parents=True)

    def record(**changed):
        (run.folder / harness.RESULT_FILE).write_text(
            json.dumps({"overrides": run.overrides, "settings": {**settings, **changed}})
        )

    record()
    with caplog.at_level("WARNING", logger=harness.log.name):
        harness.check_grid(grid)
    assert "without a check" not in caplog.text
    record(**{"compress.a_key_removed_since": 3})
    harness.check_grid(grid)
    record(**{"compress.min_kept": 5, "finetune.lr": 0.5})
    with pytest.raises(ConfigError, match=r"no longer give \(compress.min_kept: 5 → 1; finetune.lr: 0.5 → "):
        harness.check_grid(grid)
    (run.folder / harness.RESULT_FILE).write_text(json.dumps({"overrides": run.overrides}))
    with caplog.at_level("WARNING", logger=harness.log.name):
        harness.check_grid(grid)
    warning = f"1 finished run(s) of the lenet5_mnist grid were recorded before runs recorded their settings (e.g. {run.folder})"
    assert warning in caplog.text


# ---------------------------------------------------------------------------------------------- deepiot-export int8


@pytest.fixture
def checkpoint_without_its_data(tmp_path):
    """A trained LSTM checkpoint whose recorded dataset (an npz file) is gone."""
    import torch

    from deepiot.checkpoint import save_checkpoint
    from deepiot.models import build_model

    model_config = {
        "_target_": "deepiot.models.LSTMClassifier",
        "hidden_size": 8,
        "num_layers": 1,
        "bidirectional": False,
        "input_shape": [16, 6],
        "num_classes": 4,
    }
    torch.manual_seed(0)
    payload = {
        "kind": "trained_model",
        "model_config": model_config,
        "state_dict": build_model(model_config).state_dict(),
        "metrics": {"test_accuracy": 0.5, "val_accuracy": 0.5},
        "config": {
            "data": {"dataset": {"_target_": "deepiot.data.load_npz", "path": str(tmp_path / "gone.npz")}}
        },
        "data": {"name": "gone", "input_shape": [16, 6], "num_classes": 4},
    }
    save_checkpoint(payload, tmp_path / "run" / "model.pt")
    return tmp_path / "run" / "model.pt"


INT8_CASES = {
    "int8_windows=0": (["int8_windows=0"], r"int8_windows=0 is invalid: expected .* an integer >= 1"),
    "int8_windows=abc": (["int8_windows=abc"], r"int8_windows='abc' is invalid: expected"),
    "int8_windows=1.5": (["int8_windows=1.5"], r"int8_windows=1.5 is invalid: expected"),
    "int8_max_drop=abc": (
        ["int8_max_drop=abc"],
        r"int8_max_drop='abc' is invalid: expected .* a number >= 0",
    ),
    "int8_max_drop=-1": (["int8_max_drop=-1"], r"int8_max_drop=-1 is invalid: expected"),
    "dataset gone": (
        [],
        r"int8 export calibrates on the training split of the dataset .*model.pt was trained on .* cannot be "
        r"loaded: npz file .*gone.npz does not exist",
    ),
}


@pytest.mark.parametrize("case_id", list(INT8_CASES))
def test_int8_export_refuses_before_exporting_anything(
    case_id, checkpoint_without_its_data, tmp_path, capsys
):
    from hydra import compose, initialize_config_dir

    from deepiot.cli import CONFIG_DIR
    from deepiot.cli.export import run_export

    overrides, pattern = INT8_CASES[case_id]
    before = files_under(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="export",
            overrides=[f"checkpoint={checkpoint_without_its_data}", "int8=true", *overrides],
        )
    with pytest.raises(SystemExit) as stopped, reported_errors("deepiot-export"):
        run_export(cfg)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("deepiot-export: error: ") and err.count("deepiot-export: error:") == 1, err
    assert re.search(pattern, err, flags=re.S), (pattern, err)
    assert files_under(tmp_path) == before  # no model.onnx, model.ts or manifest


# ---------------------------------------------------------------------------------------------- deepiot-profile

PROFILE_CASES = {
    "runtime=tflite": (
        ["runtime=tflite"],
        r"runtime must be one of \('onnxruntime', 'torch', 'executorch'\), got 'tflite': the runtime whose",
    ),
    "executorch threads=2": (
        ["runtime=executorch", "threads=2"],
        "runtime=executorch profiles with threads=1 only, got threads=2",
    ),
    "architectures=[vgg]": (
        ["architectures=[vgg]"],
        r"config value architectures=\['vgg'\] is invalid: expected a non-empty list of reference models among "
        r"\['lenet5', 'deepsense', 'lstm'\]",
    ),
    "architectures=[]": (["architectures=[]"], r"config value architectures=\[\] is invalid"),
    "architectures=lenet5": (["architectures=lenet5"], "config value architectures='lenet5' is invalid"),
}


@pytest.mark.parametrize("case_id", list(PROFILE_CASES))
def test_deepiot_profile_refuses_bad_settings_before_any_timing(case_id, tmp_path):
    import subprocess
    import sys

    arguments, pattern = PROFILE_CASES[case_id]
    command = [sys.executable, "-m", "deepiot.cli.profile", *arguments, f"out_dir={tmp_path / 'profile'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("deepiot-profile: error: ") and done.stderr.count("error:") == 1, (
        done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one paragraph
    assert re.search(pattern, done.stderr), (pattern, done.stderr)
    assert files_under(tmp_path) == []  # no suite, no profile


# ---------------------------------------------------------------------------------------------- scripts/edge_table.py

EDGE_TABLE_CASES = {
    "no compressed": (["t.original={model}"], r"for every task; task\(s\) without both: \['t'\]"),
    "nothing": ([], "for every task; no task given"),
    "missing file": (
        ["t.original={tmp}/gone.pt", "t.compressed={model}"],
        r"'t.original=.*gone.pt' is invalid: expected <task>.original=<existing checkpoint>",
    ),
    "unknown key": (["t.original={model}", "t.compressed={model}", "speed=3"], "'speed=3' is invalid"),
    "repeats=0": (["t.original={model}", "t.compressed={model}", "repeats=0"], "repeats='0' is invalid"),
    "litert=yes": (["t.original={model}", "t.compressed={model}", "litert=yes"], "litert='yes' is invalid"),
}


@pytest.mark.parametrize("case_id", list(EDGE_TABLE_CASES))
def test_edge_table_refuses_bad_arguments_before_any_export(case_id, tmp_path):
    import subprocess
    import sys

    arguments, pattern = EDGE_TABLE_CASES[case_id]
    (tmp_path / "model.pt").write_text("not read before the arguments are checked\n")
    arguments = [argument.format(model=tmp_path / "model.pt", tmp=tmp_path) for argument in arguments]
    script = Path(__file__).resolve().parents[1] / "scripts" / "edge_table.py"
    command = [sys.executable, str(script), *arguments]
    command += [f"out_dir={tmp_path / 'out'}", f"work_dir={tmp_path / 'work'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("edge_table: error: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one paragraph
    assert re.search(pattern, done.stderr), (pattern, done.stderr)
    assert files_under(tmp_path) == ["model.pt"]  # no export, no table


# ---------------------------------------------------------------------------------------- scripts/compare_criteria.py

CRITERIA_CASES = {
    "no run dir": ([], "the following arguments are required: --run-dir"),
    "run dir without an original": (
        ["--run-dir", "{tmp}/empty", "--counts-from", "r.json"],
        "has no original/train",
    ),
    "missing counts file": (["--run-dir", "{fold}", "--counts-from", "gone.json"], "is not a finished run's"),
    "malformed counts file": (
        ["--run-dir", "{fold}", "--counts-from", "bad.json"],
        "is not a finished run's",
    ),
    "empty counts": (["--run-dir", "{fold}", "--counts-from", "empty.json"], "kept_counts must map groups"),
    "threads 0": (
        ["--run-dir", "{fold}", "--counts-from", "r.json", "--threads", "0"],
        "--threads: expected",
    ),
    "threads x": (
        ["--run-dir", "{fold}", "--counts-from", "r.json", "--threads", "x"],
        "--threads: expected",
    ),
    "empty criteria": (
        ["--run-dir", "{fold}", "--counts-from", "r.json", "--criteria", ""],
        "--criteria: expected",
    ),
    "unknown criterion": (
        ["--run-dir", "{fold}", "--criteria", "l2", "--counts-from", "r.json"],
        "subset of",
    ),
}


@pytest.mark.parametrize("case_id", list(CRITERIA_CASES))
def test_compare_criteria_refuses_bad_arguments_before_any_work(case_id, tmp_path):
    import subprocess
    import sys

    arguments, pattern = CRITERIA_CASES[case_id]
    fold = tmp_path / "fold0"
    (fold / "original" / "train").mkdir(parents=True)
    (fold / "original" / "train" / "model.pt").write_text("not read before the arguments are checked\n")
    (fold / "r.json").write_text('{"kept_counts": {"conv1": 3}}\n')
    (fold / "bad.json").write_text("{not json\n")
    (fold / "empty.json").write_text('{"kept_counts": {}}\n')
    (tmp_path / "empty").mkdir()
    before = files_under(tmp_path)
    arguments = [argument.format(fold=fold, tmp=tmp_path) for argument in arguments]
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_criteria.py"
    done = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("compare_criteria: error: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one paragraph
    assert re.search(pattern, done.stderr), (pattern, done.stderr)
    assert files_under(tmp_path) == before  # nothing written


# ---------------------------------------------------------------------------------------------- launchers


def test_a_launcher_whose_package_is_missing_is_refused_with_the_install_command(monkeypatch):
    import importlib.util

    from deepiot.cli import check_launcher
    from deepiot.utils import ConfigError

    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "ray" else real_find_spec(name, *args),
    )
    with pytest.raises(ConfigError, match=r"needs the Python package 'ray', .* pip install -e \"\.\[ray\]\""):
        check_launcher("config", ["-m", "hydra/launcher=ray_cluster", "seed=0,1"])
    check_launcher("config", ["hydra/launcher=ray_cluster", "seed=1"])  # no sweep: the launcher is not used


@pytest.mark.parametrize(("n_jobs", "fine"), [("0", False), ("abc", False), ("2", True), ("-1", True)])
def test_joblib_n_jobs_is_checked_before_the_sweep(n_jobs, fine):
    from deepiot.cli import check_launcher
    from deepiot.utils import ConfigError

    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    arguments = ["-m", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={n_jobs}", "seed=0,1"]
    if fine:
        check_launcher("baseline", arguments)
    else:
        with pytest.raises(
            ConfigError,
            match=rf"hydra.launcher.n_jobs={n_jobs}.* (is invalid: expected .* integer >= 1|could not be converted)",
        ):
            check_launcher("baseline", arguments)


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 is invalid"),
        (["hydra/launcher=ray_cluster"], r"needs the Python package 'ray'"),
    ],
)
def test_real_command_line_refuses_a_bad_launcher_before_the_sweep(launcher, expected, tmp_path):
    import importlib.util
    import subprocess
    import sys

    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher" if "ray" in expected else "hydra_plugins.hydra_joblib_launcher"
    )
    if "ray" in expected and importlib.util.find_spec("ray") is not None:
        pytest.skip("Ray is installed here")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "deepiot.cli.train", "-m", *launcher, "seed=0,1"]
    command += [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.original_dir={tmp_path / 'original'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("deepiot-train: error: ") and re.search(expected, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert files_under(tmp_path) == []  # no sweep folder


# ---------------------------------------------------------------------------------------------- removed settings


REMOVED = {  # a removed setting on the command line → what its message must name
    "paths.artifacts_dir=out": r"paths\.artifacts_dir is no longer a setting: .*paths\.output_dir",
    "+paths.artifacts_dir=out": r"paths\.artifacts_dir is no longer a setting: .*paths\.output_dir",
    "~paths.artifacts_dir": r"paths\.artifacts_dir is no longer a setting: .*paths\.output_dir",
    "trainer.num_threads=1": r"trainer\.num_threads is no longer a setting: it is the root key num_threads now, "
    r".*use num_threads=<value> instead of trainer\.num_threads=<value>\.$",
    "trainer.progress_bar=false": r"trainer\.progress_bar is no longer a setting: it is the root key progress_bar "
    r"now, .*use progress_bar=<value> instead of trainer\.progress_bar=<value>\.$",
}


@pytest.mark.parametrize("argument", list(REMOVED))
def test_a_removed_setting_is_refused_with_its_replacement(argument):
    from deepiot.cli import check_removed_keys
    from deepiot.utils import ConfigError

    with pytest.raises(ConfigError, match=REMOVED[argument]):
        check_removed_keys(["experiment=lenet5_mnist", argument])
    # settings that exist: the root keys, and the trainer group's others
    check_removed_keys(
        ["paths.original_dir=out", "num_threads=1", "progress_bar=false", "trainer.resume=false"]
    )


@pytest.mark.parametrize(
    "argument", ["paths.artifacts_dir=out", "trainer.num_threads=1", "trainer.progress_bar=false"]
)
@pytest.mark.parametrize("command", ["train", "compress", "baseline"])
def test_commands_refuse_a_removed_setting_before_hydra_runs(
    command, argument, monkeypatch, tmp_path, capsys
):
    import importlib

    main = importlib.import_module(f"deepiot.cli.{command}").main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [f"deepiot-{command}", argument])
    with pytest.raises(SystemExit) as stopped:
        main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    key = argument.split("=")[0]
    assert err.startswith(f"deepiot-{command}: error: {key} is no longer a setting"), err
    assert err.count("\n") == 1  # one paragraph
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs/ run folder
