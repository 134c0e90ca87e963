"""Robustness behaviours that are not refusals: what a failed run keeps, warnings, progress lines, seeds and names."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn
from torch.utils.data import TensorDataset

from deepiot import train as train_module
from deepiot.checkpoint import load_checkpoint
from deepiot.cli import CONFIG_DIR, compose_config
from deepiot.cli.compress import compression_config
from deepiot.cli.train import ensure_trained
from deepiot.compression import CompressionConfig, LoopConfig, compress_model
from deepiot.compression.step import LoopState, check_finite
from deepiot.data import load_npz
from deepiot.finetune import FinetuneConfig
from deepiot.report import REPORT_JSON, write_report
from deepiot.runtime import CompressionError
from deepiot.train import TrainingError, train
from deepiot.utils import ConfigError, remove_stale_temporaries

LSTM = ["data=npz", "model=lstm", "model.hidden_size=8", "model.num_layers=1", "progress_bar=false"]


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def windows_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "windows.npz"
    np.savez(path, X=rng.normal(size=(96, 16, 6)).astype(np.float32), y=np.arange(96) % 4)
    return path


def lstm_config(tmp_path, npz, *overrides: str):
    return compose_config(
        [*LSTM, f"data.dataset.path={npz}", f"paths.output_dir={tmp_path / 'run'}", *overrides]
    )


def test_training_that_diverges_keeps_the_last_good_epoch_and_writes_no_model(
    tmp_path, windows_npz, monkeypatch
):
    real_epoch = train_module.train_one_epoch

    def exploding_second_epoch(model, loader, optimizer, scheduler, trainer, epoch, writer, progress):
        loss = real_epoch(model, loader, optimizer, scheduler, trainer, epoch, writer, progress)
        return 1e12 if epoch == 1 else loss

    monkeypatch.setattr(train_module, "train_one_epoch", exploding_second_epoch)
    with pytest.raises(
        TrainingError, match=r"diverged in epoch 2: .*last.pt \(epoch 1\) keeps the last good state"
    ):
        train(lstm_config(tmp_path, windows_npz, "trainer.epochs=2"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "model.pt").exists()


def test_label_gap_gives_a_warning_naming_the_missing_class(tmp_path, caplog):
    path = tmp_path / "gap.npz"
    labels = np.array([0, 1, 3] * 20)
    np.savez(path, X=np.random.default_rng(0).normal(size=(60, 8, 2)).astype(np.float32), y=labels)
    with caplog.at_level(logging.WARNING, logger="deepiot.data.npz"):
        bundle = load_npz(str(path))
    assert bundle.num_classes == 4
    assert "1 of them never occur: 2." in caplog.text


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([], "No state was saved yet"),
        ([{"iteration": 200}], r"last good state \(iteration 200\) was written at the last evaluation"),
    ],
)
def test_nan_message_says_what_was_saved(history, message):
    state = LoopState(keep_logits={}, iteration=250, history=history)
    with pytest.raises(CompressionError, match=message):
        check_finite("critic loss", torch.tensor(math.nan), state, tau=0.1)


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path, windows_npz):
    run = tmp_path / "run"
    (run / ".export.k2j4.tmp").mkdir(parents=True)
    (run / ".export.k2j4.tmp" / "model.onnx").write_bytes(b"half")
    (run / ".last.pt.x8a1.tmp").write_bytes(b"\0" * 1024)
    (run / "notes.txt").write_text("mine\n")
    train(lstm_config(tmp_path, windows_npz, "trainer.epochs=1"))
    assert sorted(path.name for path in run.glob(".*")) == []
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "model.pt").is_file()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_report_json_is_written_last(tmp_path, monkeypatch):
    from deepiot import report as report_module

    def failing_plot(history, path):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "plot_progress", failing_plot)
    report = {"groups": [{"name": "fc", "original": 4, "kept": 2}], "history": []}
    with pytest.raises(OSError, match="disk full"):
        write_report(report, tmp_path)
    assert not (tmp_path / REPORT_JSON).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept_elements.png"]  # no partial files


def test_compression_without_a_bar_prints_a_line_per_evaluation(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    data = TensorDataset(torch.randn(64, 12), torch.arange(64) % 3)
    config = CompressionConfig(
        loop=LoopConfig(max_iterations=20, eval_every=10, batch_size=16), finetune=FinetuneConfig(steps=0)
    )
    with caplog.at_level(logging.INFO, logger="deepiot.compression.loop"):
        compress_model(model, data, data, data, config, progress=False)
    lines = [record.message for record in caplog.records if record.message.startswith("iteration ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"]
    for field in ("τ", "val_accuracy", "params left", "MACs left", "elapsed", "ETA"):
        assert field in lines[0]


def test_compression_seed_varies_apart_from_the_originals(tmp_path, windows_npz):
    original = tmp_path / "original"
    train(lstm_config(tmp_path, windows_npz, "trainer.epochs=1", f"paths.output_dir={original}"))
    cfg = lstm_config(
        tmp_path, windows_npz, "trainer.epochs=1", f"paths.original_dir={original}", "compress.seed=1"
    )
    assert compression_config(cfg).loop.seed == 1
    assert ensure_trained(cfg) == original / "model.pt"  # the seed-0 original is reused, not retrained
    default = lstm_config(tmp_path, windows_npz, "trainer.epochs=1")
    assert compression_config(default).loop.seed == 0
    other_original = lstm_config(
        tmp_path, windows_npz, "trainer.epochs=1", f"paths.original_dir={original}", "seed=1"
    )
    with pytest.raises(ConfigError, match="seed: 0 → 1"):
        ensure_trained(other_original)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "lenet5_mnist"),
        (["data=npz", "model=lstm"], "lstm_npz"),
        (["model=deepsense", "data=hapt_user"], "deepsense_hapt_user"),
        (["experiment=lstm_hapt_activity"], "lstm_hapt_activity"),
    ],
)
def test_runs_are_named_after_their_model_and_data(overrides, name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.name == name
    assert cfg.hydra.run.dir == f"outputs/train/{name}"


@pytest.mark.parametrize("field", ["max_iterations", "batch_size", "warmup_iterations", "seed"])
def test_python_api_integer_settings_must_be_integers(field):
    with pytest.raises(ValueError, match=rf"compress.{field} must be .*integer, got 2.5"):
        LoopConfig(**{field: 2.5})
