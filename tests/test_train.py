from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import deepiot.cli.train as train_cli
import deepiot.train as train_module
from deepiot.checkpoint import load_checkpoint, load_trained_model, save_checkpoint
from deepiot.cli import compose_config
from deepiot.cli.train import ensure_trained
from deepiot.data import load_mnist
from deepiot.runtime import evaluate_loader
from deepiot.train import train
from deepiot.utils import ConfigError

# small data, one thread (the machine is shared: oversubscribed threads are many times slower)
TINY = [
    "data.dataset.limit=256",
    "progress_bar=false",
    "trainer.log_every=2",
    "num_threads=1",
]
METRIC_KEYS = {"train_loss", "val_accuracy", "test_accuracy", "epochs", "wall_time_s", "params"}


@pytest.fixture(autouse=True)
def clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def tiny_config(output_dir, *overrides: str, experiment: str = "lenet300_mnist"):
    return compose_config([f"experiment={experiment}", *TINY, f"paths.output_dir={output_dir}", *overrides])


def without_wall_time(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key != "wall_time_s"}


def assert_same_weights(path_a, path_b) -> None:
    weights_a = load_checkpoint(path_a)["state_dict"]
    weights_b = load_checkpoint(path_b)["state_dict"]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


def test_train_writes_a_self_describing_model_whose_accuracy_reproduces(tmp_path):
    metrics = train(tiny_config(tmp_path, "trainer.epochs=2"))
    assert set(metrics) == METRIC_KEYS and metrics["epochs"] == 2.0
    model, checkpoint = load_trained_model(tmp_path / "model.pt")
    assert metrics["params"] == sum(parameter.numel() for parameter in model.parameters())
    assert checkpoint["data"]["name"] == "mnist" and checkpoint["data"]["input_shape"] == [1, 28, 28]
    assert checkpoint["data"]["class_names"] == [str(digit) for digit in range(10)]
    assert len(checkpoint["data"]["normalization"]["mean"]) == 1
    assert checkpoint["model_config"]["_target_"] == "deepiot.models.LeNet300"
    assert checkpoint["config"]["name"] == "lenet300_mnist"
    test_loader = torch.utils.data.DataLoader(load_mnist(limit=256).test, batch_size=100)
    accuracy = evaluate_loader(model, test_loader, torch.device("cpu")).accuracy
    assert accuracy == metrics["test_accuracy"]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["metrics"] == metrics and [row["epoch"] for row in record["history"]] == [1, 2]


@pytest.mark.parametrize("experiment", ["lenet5_mnist", "deepsense_hapt_activity"])
def test_same_seed_gives_identical_runs(tmp_path, experiment):
    overrides = ("trainer.epochs=1", "trainer.limit_batches=3")
    first = train(tiny_config(tmp_path / "a", *overrides, experiment=experiment))
    second = train(tiny_config(tmp_path / "b", *overrides, experiment=experiment))
    assert without_wall_time(first) == without_wall_time(second)
    assert_same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


def test_other_seed_gives_other_weights(tmp_path):
    train(tiny_config(tmp_path / "a", "trainer.epochs=1"))
    train(tiny_config(tmp_path / "b", "trainer.epochs=1", "seed=1"))
    weights_a = load_checkpoint(tmp_path / "a" / "model.pt")["state_dict"]["fc1.weight"]
    weights_b = load_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]["fc1.weight"]
    assert not torch.equal(weights_a, weights_b)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    uninterrupted = train(tiny_config(tmp_path / "whole", "trainer.epochs=2"))

    save_checkpoint = train_module.save_checkpoint

    def save_then_interrupt(payload, path):
        save_checkpoint(payload, path)
        raise KeyboardInterrupt  # the process dies right after the first epoch's last.pt is written

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "resumed", "trainer.epochs=2"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt", kind="train_state")["epoch"] == 1
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)

    resumed = train(tiny_config(tmp_path / "resumed", "trainer.epochs=2"))
    assert without_wall_time(resumed) == without_wall_time(uninterrupted)
    assert_same_weights(tmp_path / "whole" / "model.pt", tmp_path / "resumed" / "model.pt")
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_resume_with_another_config_is_refused(tmp_path):
    train(tiny_config(tmp_path, "trainer.epochs=1"))
    with pytest.raises(ConfigError, match=r"cannot resume .*trainer\.lr: 0\.001 → 0\.01"):
        train(tiny_config(tmp_path, "trainer.epochs=1", "trainer.lr=0.01"))
    restarted = train(tiny_config(tmp_path, "trainer.epochs=1", "trainer.lr=0.01", "trainer.resume=false"))
    assert load_checkpoint(tmp_path / "model.pt")["config"]["trainer"]["lr"] == 0.01
    assert restarted["epochs"] == 1.0


def test_ensure_trained_trains_once_then_reuses(tmp_path, monkeypatch):
    # as inside another entry point: paths.output_dir is that entry point's Hydra run folder (not active here)
    original = f"paths.original_dir={tmp_path / 'original'}"
    cfg = compose_config(["experiment=lenet300_mnist", *TINY, "trainer.epochs=1", original])
    path = ensure_trained(cfg)
    assert path == tmp_path / "original" / "model.pt"
    assert load_trained_model(path)[1]["metrics"]["epochs"] == 1.0
    assert (tmp_path / "original" / "tensorboard").is_dir()

    def fail(cfg):
        raise AssertionError("ensure_trained retrained an existing original")

    monkeypatch.setattr(train_cli, "train", fail)
    assert ensure_trained(cfg) == path
    # an original trained before num_threads and progress_bar became root keys saved them in its trainer group
    checkpoint = load_checkpoint(path)
    checkpoint["config"]["trainer"].update(num_threads=1, progress_bar=False)
    save_checkpoint(checkpoint, path)
    assert ensure_trained(cfg) == path
    other = compose_config(["experiment=lenet300_mnist", *TINY, "trainer.epochs=3", original])
    with pytest.raises(ConfigError, match=r"trained with another config \(trainer\.epochs: 1 → 3\)"):
        ensure_trained(other)


def run_cli(*arguments: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deepiot.cli.train", *arguments]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_command_line_writes_model_and_tensorboard_events(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "experiment=lenet300_mnist",
        "data.dataset.limit=512",
        "trainer.epochs=1",
        "trainer.log_every=2",
        "num_threads=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert "[deepiot-train] lenet300_mnist: test_accuracy" in result.stdout
    model, checkpoint = load_trained_model(run_dir / "model.pt")
    assert checkpoint["config"]["paths"]["output_dir"] == str(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"losses/train", "losses/val", "charts/val_accuracy", "charts/learning_rate"} <= tags
    assert (
        len(events.Scalars("losses/train")) == 8 // 2
    )  # 512 samples / batch 64 = 8 steps, one point every 2
    assert events.Scalars("charts/val_accuracy")[0].value == pytest.approx(
        checkpoint["metrics"]["val_accuracy"]
    )
    assert "hyperparameters/text_summary" in events.Tags()["tensors"]


def test_multirun_smoke(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "-m",
        "experiment=lenet300_mnist",
        "data.dataset.limit=256",
        "trainer.epochs=1",
        "trainer.lr=0.001,0.002",
        "num_threads=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    runs = sorted(path.parent.name for path in sweep_dir.glob("*/model.pt"))
    common = "data.dataset.limit=256,experiment=lenet300_mnist,trainer.epochs=1"
    assert runs == [f"{common},trainer.lr=0.001", f"{common},trainer.lr=0.002"]
