"""Sweeps through Hydra launchers: the launcher configs compose, a 2-job joblib sweep runs in parallel with one
folder per job, and rerunning a sweep skips the finished jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from deepiot import train as train_module
from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.cli import CONFIG_DIR, compose_config
from deepiot.cli.compress import FINETUNED_MODEL, finished_report
from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.report import REPORT_JSON

TINY_TRAIN = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "num_threads=1",
    "device=cpu",
]


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def launcher_config(*overrides: str) -> dict:
    """hydra.launcher, its ${oc.env:...} settings resolved (the ${hydra...} ones left as they are)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    config = OmegaConf.to_container(cfg.hydra.launcher)
    for path in ("cpus_per_task", "gpus_per_node", "ray.remote.num_cpus", "ray.remote.num_gpus"):
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        if key in node:
            node[key] = OmegaConf.select(cfg.hydra.launcher, path)
    return config


@pytest.mark.parametrize(
    ("launcher", "plugin", "target", "settings"),
    [
        ("joblib", "hydra_joblib_launcher", "joblib_launcher.JoblibLauncher", {"n_jobs": -1}),
        ("parallel", "hydra_joblib_launcher", "joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
        (
            "slurm",
            "hydra_submitit_launcher",
            "submitit_launcher.SlurmLauncher",
            {"gpus_per_node": 0, "cpus_per_task": 4, "partition": None,
             "submitit_folder": "${hydra.sweep.dir}/.submitit/%j"},
        ),
        (
            "local",
            "hydra_submitit_launcher",
            "submitit_launcher.LocalLauncher",
            {"gpus_per_node": 0, "cpus_per_task": 4, "submitit_folder": "${hydra.sweep.dir}/.submitit/%j"},
        ),
        (
            "ray_cluster",
            "hydra_ray_launcher",
            "ray_launcher.RayLauncher",
            {"ray": {"init": {"address": "auto", "object_store_memory": None, "runtime_env": {
                "env_vars": {"DEEPIOT_LAUNCH_DIR": "${deepiot.cwd:}"},
                "worker_process_setup_hook": "deepiot.launchers.ray_cluster.enter_launch_folder"}},
                "remote": {"max_retries": 0, "num_gpus": 0, "num_cpus": 4}}},
        ),
    ],
)  # fmt: skip
def test_launcher_configs_compose_onto_the_plugins_schema(launcher, plugin, target, settings, monkeypatch):
    pytest.importorskip(
        f"hydra_plugins.{plugin}", reason=f"{plugin} is not installed (pip install deepiot[...])"
    )
    for variable in ("DEEPIOT_CPUS_PER_JOB", "DEEPIOT_GPUS_PER_JOB"):
        monkeypatch.delenv(variable, raising=False)
    config = launcher_config(f"hydra/launcher={launcher}")
    assert config["_target_"] == f"hydra_plugins.{plugin}.{target}"
    assert {key: config[key] for key in settings} == settings


def test_per_job_resources_come_from_the_environment(monkeypatch):
    """CPU-only by default; DEEPIOT_GPUS_PER_JOB / DEEPIOT_CPUS_PER_JOB set every launcher's request."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    monkeypatch.setenv("DEEPIOT_GPUS_PER_JOB", "1")
    monkeypatch.setenv("DEEPIOT_CPUS_PER_JOB", "8")
    ray = launcher_config("hydra/launcher=ray_cluster")["ray"]["remote"]
    assert (ray["num_gpus"], ray["num_cpus"]) == (1, 8)
    for launcher in ("slurm", "local"):
        config = launcher_config(f"hydra/launcher={launcher}")
        assert (config["gpus_per_node"], config["cpus_per_task"]) == (1, 8)


def test_slurm_differs_from_the_tested_local_launcher_only_in_its_executor(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    local, slurm = (launcher_config(f"hydra/launcher={name}") for name in ("local", "slurm"))
    shared = {key: value for key, value in slurm.items() if key in local}
    assert shared == {**local, "_target_": slurm["_target_"]}
    assert set(slurm) - set(local) <= {"partition", "qos", "comment", "constraint", "exclude", "gres",
                                       "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account",
                                       "signal_delay_s", "max_num_timeout", "additional_parameters",
                                       "array_parallelism", "setup"}  # fmt: skip


def test_launcher_settings_override_on_the_command_line():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    config = launcher_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"
    )
    assert (config["partition"], config["mem_gb"]) == ("gpu", 64)


TINY_COMPRESS = [
    *TINY_TRAIN,
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "compress.batch_size=32",
    "finetune.steps=10",
    "compress.latency_threads=null",
]


def run_sweep(cwd: Path) -> str:
    """`deepiot-compress -m hydra/launcher=parallel seed=0,1` (tiny) in `cwd`; returns its output."""
    command = [sys.executable, "-m", "deepiot.cli.compress", "-m", "hydra/launcher=parallel", "seed=0,1"]
    completed = subprocess.run(
        [*command, *TINY_COMPRESS, "hydra.sweep.dir=sweep"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout + completed.stderr


def test_joblib_sweep_runs_two_jobs_in_parallel_and_a_rerun_skips_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    output = run_sweep(tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in output and "is launching 2 jobs" in output
    reports = sorted((tmp_path / "sweep").glob("*/report.json"))  # one folder per job
    assert len(reports) == 2
    assert all(
        path.parent.name.endswith(f"seed={seed},trainer.epochs=1")
        for path, seed in zip(reports, (0, 1), strict=True)
    )
    assert [json.loads(path.read_text())["config"]["loop"]["seed"] for path in reports] == [0, 1]
    # each seed trained its own original, beside the default one (paths.original_dir)
    originals = [
        tmp_path / "outputs" / "train" / name / "model.pt"
        for name in ("lenet300_mnist", "lenet300_mnist_seed1")
    ]
    assert [load_checkpoint(path)["config"]["seed"] for path in originals] == [0, 1]
    written = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}

    output = run_sweep(tmp_path)
    rewritten = {path for path, stamp in written.items() if path.stat().st_mtime_ns != stamp}
    assert not {path for path in rewritten if path.suffix in (".pt", ".json", ".onnx")}  # nothing redone
    logs = "".join(path.read_text() for path in (tmp_path / "sweep").glob("*/*.log"))
    assert logs.count("holds a finished run with this config: skipped") == 2
    assert output.count("params left") == 2


def test_a_finished_training_run_is_skipped(tmp_path, monkeypatch):
    cfg = compose_config([*TINY_TRAIN, f"paths.output_dir={tmp_path}"])
    metrics = train_module.train(cfg)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "run_epoch", fail)
    assert train_module.train(cfg) == metrics
    with pytest.raises(AssertionError, match="trained again"):  # resume=false starts over
        train_module.train(
            compose_config([*TINY_TRAIN, f"paths.output_dir={tmp_path}", "trainer.resume=false"])
        )


def test_a_finished_compression_run_is_recognised_by_its_config(tmp_path):
    config = CompressionConfig(loop=LoopConfig(max_iterations=30))
    assert finished_report(tmp_path, config) is None  # nothing there
    report = {"config": config.to_dict(), "accuracy": {"compressed_val": 0.9}}
    (tmp_path / REPORT_JSON).write_text(json.dumps(report))
    assert finished_report(tmp_path, config) is None  # the fine-tuned model (written last) is missing
    save_checkpoint({"kind": "trained_model"}, tmp_path / FINETUNED_MODEL)
    assert finished_report(tmp_path, config) == report
    assert finished_report(tmp_path, CompressionConfig(loop=LoopConfig(max_iterations=40))) is None
