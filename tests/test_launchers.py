"""Sweeps through Hydra launchers: the launcher configs compose, a 2-job joblib sweep runs in parallel with one
folder per job, and rerunning a sweep skips the finished jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.cli import CONFIG_DIR
from deepiot.cli.compress import FINETUNED_MODEL, finished_report
from deepiot.report import REPORT_JSON
from deepiot.trainer import CompressionConfig, LoopConfig

TINY_TRAIN = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "trainer.num_threads=1",
    "device=cpu",
]


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def launcher_config(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher)


@pytest.mark.parametrize(
    ("launcher", "plugin", "target", "settings"),
    [
        ("joblib", "hydra_joblib_launcher", "joblib_launcher.JoblibLauncher", {"n_jobs": -1}),
        ("parallel", "hydra_joblib_launcher", "joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
        (
            "slurm",
            "hydra_submitit_launcher",
            "submitit_launcher.SlurmLauncher",
            {"gpus_per_node": 1, "partition": None, "submitit_folder": "${hydra.sweep.dir}/.submitit/%j"},
        ),
        (
            "ray_cluster",
            "hydra_ray_launcher",
            "ray_launcher.RayLauncher",
            {"ray": {"init": {"address": "auto"}, "remote": {"num_gpus": 1, "num_cpus": 4}}},
        ),
    ],
)
def test_launcher_configs_compose_onto_the_plugins_schema(launcher, plugin, target, settings):
    pytest.importorskip(
        f"hydra_plugins.{plugin}", reason=f"{plugin} is not installed (pip install deepiot[...])"
    )
    config = launcher_config(f"hydra/launcher={launcher}")
    assert config["_target_"] == f"hydra_plugins.{plugin}.{target}"
    assert {key: config[key] for key in settings} == settings


def test_launcher_settings_override_on_the_command_line():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    config = launcher_config(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"
    )
    assert (config["partition"], config["mem_gb"]) == ("gpu", 64)


def run_sweep(sweep_dir: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "deepiot.cli.train",
        "-m",
        "hydra/launcher=parallel",
        "seed=0,1",
        *TINY_TRAIN,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_joblib_sweep_runs_two_jobs_in_parallel_and_a_rerun_skips_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    first = run_sweep(sweep_dir)
    assert "Joblib.Parallel(n_jobs=2" in first.stdout + first.stderr
    assert "is launching 2 jobs" in first.stdout + first.stderr
    models = sorted(sweep_dir.glob("*/model.pt"))
    folders = [
        f"data.dataset.limit=256,device=cpu,experiment=lenet300_mnist,seed={seed},trainer.epochs=1"
        for seed in (0, 1)
    ]
    assert [path.parent.name for path in models] == folders  # one folder per job
    weights = [load_checkpoint(path)["state_dict"] for path in models]
    assert not torch.equal(weights[0]["fc1.weight"], weights[1]["fc1.weight"])  # two seeds, two runs
    written = {path: path.stat().st_mtime_ns for path in sweep_dir.rglob("*.pt")}

    second = run_sweep(sweep_dir)
    assert {path: path.stat().st_mtime_ns for path in sweep_dir.rglob("*.pt")} == written  # nothing redone
    logs = "".join(path.read_text() for path in sweep_dir.glob("*/*.log"))
    assert logs.count("holds a model trained with this config: skipped") == 2
    assert "test_accuracy" in second.stdout


def test_a_finished_compression_run_is_recognised_by_its_config(tmp_path):
    config = CompressionConfig(loop=LoopConfig(max_iterations=30))
    assert finished_report(tmp_path, config) is None  # nothing there
    report = {"config": config.to_dict(), "accuracy": {"compressed_val": 0.9}}
    (tmp_path / REPORT_JSON).write_text(json.dumps(report))
    assert finished_report(tmp_path, config) is None  # the fine-tuned model (written last) is missing
    save_checkpoint({"kind": "trained_model"}, tmp_path / FINETUNED_MODEL)
    assert finished_report(tmp_path, config) == report
    assert finished_report(tmp_path, CompressionConfig(loop=LoopConfig(max_iterations=40))) is None
