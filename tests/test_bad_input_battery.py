"""Bad-input battery: every bad config value, data file, checkpoint, plan or output folder given to
deepiot-train, deepiot-compress or deepiot-export ends with one `deepiot-<cmd>: error: ...` paragraph that
names the bad thing and what was expected, exit status 2, no traceback — before any long work, and without
writing or losing a file.

Most cases call the pure functions (`train`, `run_compress`, `run_export`) inside the same `reported_errors`
the entry points use, on configs composed from the real configs/; a handful run the real command lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.cli import CONFIG_DIR, compose_config, reported_errors
from deepiot.cli.compress import run_compress
from deepiot.cli.export import run_export
from deepiot.compression import STATE_FILE
from deepiot.models import build_model
from deepiot.structure import SlicingPlan, Structure
from deepiot.train import train

WINDOW = (16, 6)  # [T, C] of the small sensor windows used throughout
LSTM = ["data=npz", "model=lstm", "model.hidden_size=8", "model.num_layers=1"]
QUICK = ["trainer.epochs=1", "progress_bar=false"]
COMPRESS_QUICK = [
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "finetune.steps=10",
    "finetune.eval_every=10",
    "compress.batch_size=16",
    "compress.latency_threads=null",
]
MODEL_CONFIG = {
    "_target_": "deepiot.models.LSTMClassifier",
    "hidden_size": 8,
    "num_layers": 1,
    "bidirectional": False,
    "input_shape": list(WINDOW),
    "num_classes": 4,
}
DATA = {
    "name": "windows",
    "input_shape": list(WINDOW),
    "num_classes": 4,
    "class_names": ["0", "1", "2", "3"],
    "normalization": {"mean": [0.0] * 6, "std": [1.0] * 6},
    "channel_axis": -1,
}


LOGS = ("run", "run/tensorboard")  # a diverged run leaves its TensorBoard events, nothing else


class Case(NamedTuple):
    """One bad input: the command, its overrides ({name} = a file of the `assets` fixture, {tmp} = this case's
    folder), regexes the error paragraph must match, and the files the run may write (e.g. TensorBoard logs)."""

    command: str
    overrides: list[str]
    patterns: list[str]
    may_write: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- the inputs


def windows(count: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, *WINDOW)).astype(np.float32), np.arange(count) % 4


def write_npz_files(folder: Path) -> None:
    x, y = windows()
    arrays = {
        "good": {"X": x, "y": y},
        "wrong_keys": {"inputs": x, "labels": y},
        "x_2d": {"X": x[:, :, 0], "y": y},
        "x_text": {"X": np.full((4, *WINDOW), "a"), "y": y[:4]},
        "y_float": {"X": x, "y": y.astype(np.float32)},
        "y_short": {"X": x, "y": y[:-1]},
        "y_2d": {"X": x, "y": y[:, None]},
        "x_nan": {"X": np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), "y": y},
        "x_inf": {"X": np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x), "y": y},
        "label_gaps": {"X": x, "y": np.where(y == 3, 99, 0)},
        "negative_labels": {"X": x, "y": y - 1},
        "partial_splits": {"X_train": x, "y_train": y},
        "split_shapes": {
            "X_train": x,
            "y_train": y,
            "X_val": x[:8, :8],
            "y_val": y[:8],
            "X_test": x[:8],
            "y_test": y[:8],
        },
        "three_channels": {"X": x[:, :, :3], "y": y},
        "three_windows": {"X": x[:3], "y": y[:3]},
        "empty": {"X": x[:0], "y": y[:0]},
    }
    for name, content in arrays.items():
        np.savez(folder / f"{name}.npz", **content)
    np.savez(folder / "objects.npz", X=np.array([{"code": 1}] * 4, dtype=object), y=y[:4])
    (folder / "garbage.npz").write_bytes(b"this is not a zip archive\n")
    good = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(good[: len(good) // 2])
    with (folder / "single_array.npz").open("wb") as file:
        np.save(file, x)


def write_idx_roots(folder: Path) -> None:
    (folder / "mnist_empty").mkdir()
    garbage = folder / "mnist_garbage"
    garbage.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (garbage / name).write_bytes(b"\x00\x00\x08\x03garbage")
    (garbage / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")
    (folder / "mnist.pkl.gz").write_bytes(b"not a gzip pickle")
    (folder / "cifar_empty").mkdir()


def trained_payload(state_dict: dict[str, torch.Tensor], model_config: dict | None = None) -> dict:
    return {
        "kind": "trained_model",
        "model_config": model_config or MODEL_CONFIG,
        "state_dict": state_dict,
        "metrics": {"test_accuracy": 0.5, "val_accuracy": 0.5},
        "config": {},
        "data": DATA,
    }


def write_checkpoints(folder: Path) -> None:
    torch.manual_seed(0)
    model = build_model(MODEL_CONFIG)
    save_checkpoint(trained_payload(model.state_dict()), folder / "model.pt")
    nan_weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nan_weights["fc.weight"][0, 0] = float("nan")
    save_checkpoint(trained_payload(nan_weights), folder / "nan_weights.pt")
    save_checkpoint({"kind": "train_state", "state_dict": model.state_dict()}, folder / "train_state.pt")
    wider = {**MODEL_CONFIG, "hidden_size": 12}
    save_checkpoint(trained_payload(model.state_dict(), wider), folder / "wrong_shapes.pt")
    torch.save(model.state_dict(), folder / "plain_state_dict.pt")
    torch.save(model, folder / "pickled_module.pt")
    torch.save({"format": "deepiot", "version": 99, "kind": "trained_model"}, folder / "future_version.pt")
    (folder / "empty_checkpoint.pt").write_bytes(b"")
    (folder / "text.pt").write_text("not a checkpoint\n")
    whole = (folder / "model.pt").read_bytes()
    (folder / "truncated_checkpoint.pt").write_bytes(whole[: len(whole) // 2])
    write_plans(folder, model)


def write_plans(folder: Path, model: torch.nn.Module) -> None:
    structure = Structure.from_model(model, torch.randn(1, *WINDOW))
    half = {group.name: list(range(0, group.size, 2)) for group in structure.groups}
    SlicingPlan.from_structure(structure, MODEL_CONFIG, half).save(folder / "plan.json")
    other = {**MODEL_CONFIG, "hidden_size": 12}
    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan_other_model.json").write_text(json.dumps({**plan, "model_config": other}))
    out_of_range = {**plan, "kept": {name: [0, 999] for name in plan["kept"]}}
    (folder / "plan_out_of_range.json").write_text(json.dumps(out_of_range))
    (folder / "plan_corrupt.json").write_text('{"format": ')
    (folder / "plan_not_a_plan.json").write_text("[1, 2, 3]\n")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    """Every bad (and one good) npz, IDX/MNIST root, checkpoint and plan, plus a trained original."""
    folder = tmp_path_factory.mktemp("assets")
    write_npz_files(folder)
    write_idx_roots(folder)
    write_checkpoints(folder)
    GlobalHydra.instance().clear()
    original = folder / "original"
    cfg = compose_config(
        [*LSTM, *QUICK, f"data.dataset.path={folder / 'good.npz'}", f"paths.output_dir={original}"]
    )
    train(cfg)
    GlobalHydra.instance().clear()
    names = {path.stem if path.suffix != ".gz" else "mnist_pickle": str(path) for path in folder.iterdir()}
    return {**names, "original": str(original), "folder": str(folder)}


# ---------------------------------------------------------------------------------------------- the cases


def train_case(overrides: list[str], *patterns: str, data: str = "{good}") -> Case:
    return Case("train", [*LSTM, *QUICK, f"data.dataset.path={data}", *overrides], list(patterns))


def mnist_case(overrides: list[str], *patterns: str) -> Case:
    return Case("train", ["model=lenet300", *QUICK, *overrides], list(patterns))


def compress_case(overrides: list[str], *patterns: str, data: str = "{good}") -> Case:
    return Case(
        "compress", [*LSTM, *QUICK, *COMPRESS_QUICK, f"data.dataset.path={data}", *overrides], list(patterns)
    )


def export_case(overrides: list[str], *patterns: str) -> Case:
    return Case("export", overrides, list(patterns))


def wrong_type(key: str, value: str, expected: str, command: str = "train") -> tuple[str, Case]:
    pattern = rf"{re.escape(key)}='?{re.escape(value)}'? .*expected {expected}"
    make = train_case if command == "train" else compress_case
    return f"{command}:{key}={value}", make([f"{key}={value}"], pattern)


TYPE_CASES = [
    wrong_type("seed", "-1", "an integer >= 0"),
    wrong_type("seed", "abc", "an integer >= 0"),
    wrong_type("data.batch_size", "0", "an integer >= 1"),
    wrong_type("data.batch_size", "1.5", "an integer >= 1"),
    wrong_type("data.num_workers", "-1", "an integer >= 0"),
    wrong_type("trainer.epochs", "2.5", "an integer >= 1"),
    wrong_type("trainer.epochs", "0", "an integer >= 1"),
    wrong_type("trainer.optimizer", "adamw", "one of: adam, sgd"),
    wrong_type("trainer.lr", "abc", "a number > 0"),
    wrong_type("trainer.lr", "-1", "a number > 0"),
    wrong_type("trainer.momentum", "1.5", r"a number in \[0, 1\)"),
    wrong_type("trainer.weight_decay", "-1", "a number >= 0"),
    wrong_type("trainer.lr_schedule", "linear", "one of: constant, cosine, step"),
    wrong_type("trainer.lr_step_epochs", "0", "an integer >= 1"),
    wrong_type("trainer.lr_gamma", "2", r"a number in \(0, 1\]"),
    wrong_type("trainer.gradient_clip_norm", "0", "null or a number > 0"),
    wrong_type("trainer.eval_batch_size", "1.5", "an integer >= 1"),
    wrong_type("num_threads", "0", "null or an integer >= 1"),
    wrong_type("trainer.limit_batches", "0", "null or an integer >= 1"),
    wrong_type("trainer.resume", "maybe", "true or false"),
    wrong_type("progress_bar", "sometimes", "true, false or auto"),
    wrong_type("trainer.log_every", "0", "an integer >= 1"),
    wrong_type("data.dataset.val_frac", "abc", "a number"),
    wrong_type("data.dataset.seed", "1.5", "an integer"),
    wrong_type("model.hidden_size", "abc", "an integer"),
    wrong_type("model.num_layers", "2.5", "an integer"),
    wrong_type("model.bidirectional", "maybe", "true or false"),
    wrong_type("compress.max_iterations", "2.5", "an integer", "compress"),
    wrong_type("compress.max_iterations", "abc", "an integer", "compress"),
    wrong_type("compress.batch_size", "1.5", "an integer", "compress"),
    wrong_type("compress.eval_every", "abc", "an integer", "compress"),
    wrong_type("compress.target_params", "abc", "a number or null", "compress"),
    wrong_type("compress.target_macs", "abc", "a number or null", "compress"),
    wrong_type("compress.min_val_accuracy", "abc", "a number or null", "compress"),
    wrong_type("compress.patience", "1.5", "an integer", "compress"),
    wrong_type("finetune.steps", "abc", "an integer", "compress"),
    wrong_type("compress.seed", "abc", "an integer", "compress"),
    wrong_type("compress.latency_threads", "0", "null .*or an integer >= 1", "compress"),
    wrong_type("critic.lr", "abc", "a number", "compress"),
    wrong_type("critic.lam", "abc", "a number", "compress"),
    wrong_type("critic.value_hidden", "1.5", "an integer", "compress"),
    wrong_type("compressor.hidden_size", "2.5", "an integer", "compress"),
    wrong_type("compressor.lr", "abc", "a number", "compress"),
    wrong_type("compressor.init_keep_prob.conv", "abc", "a number", "compress"),
    wrong_type("schedule.steps", "2.5", "an integer", "compress"),
    wrong_type("schedule.final_tau", "abc", "a number", "compress"),
    wrong_type("schedule.name", "1", "a string", "compress"),
]

RANGE_CASES = {
    "compress:max_iterations=0": compress_case(
        ["compress.max_iterations=0"], "compress.max_iterations must be a positive integer, got 0"
    ),
    "compress:target_params=1.5": compress_case(
        ["compress.target_params=1.5"], r"compress.target_params .* must be in \(0, 1\], got 1.5"
    ),
    "compress:min_val_accuracy=2": compress_case(
        ["compress.min_val_accuracy=2"], r"compress.min_val_accuracy must be in \[0, 1\], got 2"
    ),
    "compress:seed=-1": compress_case(["compress.seed=-1"], "seed must be >= 0"),
    "compress:critic.lr=-1": compress_case(
        ["critic.lr=-1"], "critic.lr and critic.value_lr must be > 0, got -1"
    ),
    "compress:critic.betas=[0.5]": compress_case(
        ["critic.betas=[0.5]"], r"critic.betas=\[0.5\].* expected a list of 2"
    ),
    "compress:critic.baseline=magic": compress_case(
        ["critic.baseline=magic"], "critic.baseline must be one of .*, got 'magic'"
    ),
    "compress:critic.ema_decay=1": compress_case(
        ["critic.ema_decay=1"], r"critic.ema_decay must be in \[0, 1\), got 1"
    ),
    "compress:keep_prob=1.5": compress_case(
        ["compressor.init_keep_prob.conv=1.5"], r"init_keep_prob\['conv'\] must be in \(0, 1\), got 1.5"
    ),
    "compress:schedule.name=linear": compress_case(
        ["schedule.name=linear"], "schedule.name must be one of .*, got 'linear'"
    ),
    "compress:final_tau=1.5": compress_case(
        ["schedule.final_tau=1.5"], r"schedule.final_tau .* must be in \[0, 1\), got 1.5"
    ),
    "compress:decay=0": compress_case(["schedule.decay=0"], r"schedule.decay .* must be in \(0, 1\], got 0"),
    "compress:cost=joules": compress_case(
        ["cost.name=joules"], "unknown cost 'joules'; registered cost functions"
    ),
    "compress:cost.runtime=tflite": compress_case(
        ["cost.runtime=tflite", "compress.target_latency_ms=0.1"],
        r"cost.runtime must be one of \('onnxruntime', 'torch', 'executorch'\), got 'tflite': the runtime the device "
        "profile",
    ),
    "compress:unknown key": compress_case(
        ["+compress.speed=3"], "config key compress.speed is unknown: expected one of"
    ),
    "train:unknown model key": train_case(
        ["+model.depth=3"], "config key model.depth is unknown: expected one of"
    ),
    "train:unknown data key": train_case(
        ["+data.dataset.shuffle=true"], "config key data.dataset.shuffle is unknown"
    ),
    "train:bad model target": train_case(
        ["model._target_=deepiot.models.Nope"], "model._target_='deepiot.models.Nope' cannot be imported"
    ),
    "train:device": train_case(
        ["trainer.device=toaster"], "trainer.device='toaster' is not a torch device: expected e.g. cpu"
    ),
    "train:npz path missing": Case("train", [*LSTM, *QUICK], [r"data.dataset.path must be set"]),
}

DATA_CASES = {
    "npz:missing": train_case(
        [], r"npz file .*nope.npz does not exist. Expected a .npz", data="{folder}/nope.npz"
    ),
    "npz:garbage": train_case(
        [], "npz file .*garbage.npz is truncated, corrupt .* Expected a .npz", data="{garbage}"
    ),
    "npz:truncated": train_case([], "npz file .*truncated.npz is truncated, corrupt", data="{truncated}"),
    "npz:objects": train_case(
        [], "objects.npz is truncated, corrupt or holds pickled objects", data="{objects}"
    ),
    "npz:single array": train_case([], "holds a single .npy array, not named arrays", data="{single_array}"),
    "npz:wrong keys": train_case(
        [], r"has arrays \['inputs', 'labels'\] but not X and y", data="{wrong_keys}"
    ),
    "npz:X 2-D": train_case(
        [], r"has X of shape \(96, 16\).* Expected .*X \(float \[N, T, C\]", data="{x_2d}"
    ),
    "npz:X text": train_case([], r"has X of shape \(4, 16, 6\) and dtype <U1", data="{x_text}"),
    "npz:y float": train_case([], "has y of shape .* and dtype float32 for 96 windows", data="{y_float}"),
    "npz:y short": train_case([], r"has y of shape \(95,\) .* for 96 windows", data="{y_short}"),
    "npz:y 2-D": train_case([], r"has y of shape \(96, 1\)", data="{y_2d}"),
    "npz:X NaN": train_case(
        [], "contains 1 NaN or infinite values .* Expected finite numbers", data="{x_nan}"
    ),
    "npz:X inf": train_case([], "contains 1 NaN or infinite values", data="{x_inf}"),
    "npz:label gaps": train_case(
        [], r"labels up to 99, .*98 of them never occur: 1, 2, .* Expected labels 0..K-1", data="{label_gaps}"
    ),
    "npz:negative labels": train_case(
        [], r"has labels in \[-1, 2\]. Expected integers in \[0, ", data="{negative_labels}"
    ),
    "npz:too few class names": train_case(
        ["data.dataset.class_names=[a,b]"], r"labels in \[0, 3\]. Expected integers in \[0, 1\]"
    ),
    "npz:partial splits": train_case(
        [], r"has some explicit split arrays but lacks \['X_val'", data="{partial_splits}"
    ),
    "npz:split shapes": train_case([], "windows of different shapes", data="{split_shapes}"),
    "npz:empty": train_case(
        [], "gives an empty training split. Expected at least one sample", data="{empty}"
    ),
    "npz:empty val split": train_case(
        [], "the val split of dataset 'three_windows' is empty", data="{three_windows}"
    ),
    "npz:fractions": train_case(
        ["data.dataset.val_frac=0.9", "data.dataset.test_frac=0.5"],
        r"val_frac=0.9 and data.dataset.test_frac=0.5 are invalid: expected",
    ),
    "npz:lenet5": Case(
        "train",
        ["data=npz", *QUICK, "data.dataset.path={good}"],
        [
            r"model deepiot.models.LeNet5 does not fit dataset 'good' \(one sample has shape \[16, 6\].* Expected a model for this input layout"
        ],
    ),
    "npz:deepsense 3 channels": Case(
        "train",
        ["data=npz", "model=deepsense", *QUICK, "data.dataset.path={three_channels}"],
        [
            r"model deepiot.models.DeepSense does not fit dataset 'three_channels' \(one sample has shape \[16, 3\]"
        ],
    ),
    "mnist:missing root": mnist_case(
        ["data.dataset.root=/nonexistent/mnist"],
        "MNIST root /nonexistent/mnist does not exist. Expected a directory",
    ),
    "mnist:empty root": mnist_case(["data.dataset.root={mnist_empty}"], "MNIST .*mnist_empty.* Expected"),
    "mnist:garbage idx": mnist_case(["data.dataset.root={mnist_garbage}"], "MNIST IDX file .* Expected"),
    "mnist:bad pickle": mnist_case(["data.dataset.root={mnist_pickle}"], "MNIST pickle .*mnist.pkl.gz.*"),
    "mnist:limit=0": mnist_case(
        ["data.dataset.limit=0"],
        "data.dataset.limit=0 is invalid: expected null .* or a number of samples >= 1",
    ),
    "mnist:limit=2.5": mnist_case(
        ["data.dataset.limit=2.5"], "data.dataset.limit=2.5 has the wrong type: expected an integer or null"
    ),
    "cifar:no root": Case(
        "train", ["experiment=vgg_cifar10", *QUICK], [r"data.dataset.root=<path>/cifar-10-batches-py"]
    ),
    "cifar:empty root": Case(
        "train", ["experiment=vgg_cifar10", *QUICK, "data.dataset.root={cifar_empty}"], ["cifar_empty"]
    ),
    "hapt:missing root": Case(
        "train",
        ["experiment=lstm_hapt_activity", *QUICK, "data.dataset.root=/nonexistent/hapt"],
        ["/nonexistent/hapt"],
    ),
}

EXPORT_CASES = {
    "export:no checkpoint": export_case([], "deepiot-export needs checkpoint=<path to a deepiot model.pt>"),
    "export:missing": export_case(
        ["checkpoint={tmp}/nope.pt"], "checkpoint file .*nope.pt does not exist. Expected a .pt file"
    ),
    "export:empty file": export_case(
        ["checkpoint={empty_checkpoint}"],
        "empty_checkpoint.pt is not a PyTorch checkpoint .* Expected a .pt file",
    ),
    "export:text file": export_case(["checkpoint={text}"], "text.pt is not a PyTorch checkpoint"),
    "export:truncated": export_case(
        ["checkpoint={truncated_checkpoint}"], "truncated_checkpoint.pt is truncated or corrupt"
    ),
    "export:plain state_dict": export_case(
        ["checkpoint={plain_state_dict}"], "is a PyTorch file but not a deepiot checkpoint"
    ),
    "export:pickled module": export_case(
        ["checkpoint={pickled_module}"], "holds Python objects other than tensors .* refused for safety"
    ),
    "export:wrong kind": export_case(
        ["checkpoint={train_state}"],
        "is a 'train_state' checkpoint, but a 'trained_model' checkpoint was expected",
    ),
    "export:NaN weights": export_case(
        ["checkpoint={nan_weights}"], r"holds NaN or infinite weights in fc.weight.* Expected finite weights"
    ),
    "export:future version": export_case(
        ["checkpoint={future_version}"], "has format version 99; this deepiot reads versions up to 1"
    ),
    "export:wrong shapes": export_case(
        ["checkpoint={wrong_shapes}"], "its state_dict does not fit the model its model_config describes"
    ),
    "export:plan missing": export_case(
        ["checkpoint={model}", "plan={tmp}/nope.json"],
        "slicing plan .*nope.json does not exist: expected the slicing_plan.json",
    ),
    "export:plan corrupt": export_case(
        ["checkpoint={model}", "plan={plan_corrupt}"], "cannot read slicing plan .*plan_corrupt.json"
    ),
    "export:not a plan": export_case(
        ["checkpoint={model}", "plan={plan_not_a_plan}"], "not a deepiot slicing plan"
    ),
    "export:plan other model": export_case(
        ["checkpoint={model}", "plan={plan_other_model}"],
        "is a plan for another model: its model_config differs",
    ),
    "export:plan out of range": export_case(["checkpoint={model}", "plan={plan_out_of_range}"], "999"),
    "export:out_dir is a file": export_case(
        ["checkpoint={model}", "out_dir={tmp}/occupied"],
        "out_dir .*occupied cannot be created: .*occupied is an existing file, not a folder. Expected a folder",
    ),
    "export:out_dir under a file": export_case(
        ["checkpoint={model}", "out_dir={tmp}/occupied/export"], "occupied is an existing file, not a folder"
    ),
    "export:formats": export_case(
        ["checkpoint={model}", "formats=[pdf]"],
        r"export formats must be a non-empty subset of \['torchscript', 'onnx', 'executorch', 'litert'\], got \['pdf'\]",
    ),
    "export:onnx_exporter": export_case(
        ["checkpoint={model}", "onnx_exporter=magic"], "onnx_exporter must be one of .*, got 'magic'"
    ),
    "export:check": export_case(
        ["checkpoint={model}", "check=maybe"], "check='maybe' is invalid: expected true or false"
    ),
}

RUN_CASES = {
    "compress:fewer than one batch": compress_case(
        ["compress.batch_size=1000"],
        r"has \d+ samples, fewer than one batch \(compress.batch_size=1000\): expected at least 1000",
    ),
    "compress:rerun with other settings": compress_case(
        ["critic.lam=0.5", "paths.output_dir={tmp}/finished"],
        r"cannot resume from .*compress_state.pt: .*critic.*lam.*0.0 → 0.5.* Expected the same settings",
    ),
    "compress:original with NaN weights": compress_case(
        ["paths.original_dir={tmp}/nan_original"], "model.pt holds NaN or infinite weights"
    ),
    "compress:original with other config": compress_case(
        ["trainer.lr=0.01", "paths.original_dir={original}"],
        r"was trained with another config \(trainer.lr: 0.001 → 0.01\)",
    ),
    "compress:corrupt original": compress_case(
        ["paths.original_dir={tmp}/corrupt_original"], "model.pt is not a PyTorch checkpoint"
    ),
    "train:lr=1e20": Case(
        "train",
        ["data=npz", "model=lenet300", *QUICK, "data.dataset.path={good}", "trainer.lr=1e20"],
        [r"training (loss became nan|diverged)", "Lower trainer.lr"],
        LOGS,
    ),
    "train:lr=1e9": train_case(
        ["trainer.lr=1e9"],
        r"training diverged in epoch 1: the mean training loss is .*e\+\d\d \(expected a finite cross-entropy below 1000",
        "Lower trainer.lr",
    ),
    "compress:critic.lr=1e9": compress_case(
        ["critic.lr=1e9", "paths.original_dir={original}"],
        r"compression diverged: the critic loss is .* at iteration \d+ .* expected a cross-entropy below 1000",
        "No state was saved yet",
    ),
}
RUN_CASES["train:lr=1e9"] = RUN_CASES["train:lr=1e9"]._replace(may_write=LOGS)
RUN_CASES["compress:critic.lr=1e9"] = RUN_CASES["compress:critic.lr=1e9"]._replace(may_write=LOGS)

ALL_CASES = {**dict(TYPE_CASES), **RANGE_CASES, **DATA_CASES, **EXPORT_CASES, **RUN_CASES}


def prepare(case_id: str, folder: Path, assets: dict[str, str]) -> None:
    """Files some cases need in their own folder: an occupied out_dir, a finished run, broken originals."""
    (folder / "occupied").write_text("someone's file\n")
    if case_id == "compress:rerun with other settings":
        save_checkpoint(
            {"kind": "compression_state", "config": finished_run_config(assets)},
            folder / "finished" / STATE_FILE,
        )
        (folder / "finished" / "report.json").write_text("{}\n")
    if case_id in ("compress:original with NaN weights", "compress:corrupt original"):
        target = folder / ("nan_original" if "NaN" in case_id else "corrupt_original") / "model.pt"
        shutil.copytree(assets["original"], target.parent)
        if "NaN" in case_id:
            checkpoint = load_checkpoint(target)
            checkpoint["state_dict"]["fc.weight"][0, 0] = float("inf")
            save_checkpoint(checkpoint, target)
        else:
            target.write_bytes(b"corrupt")


def finished_run_config(assets: dict[str, str]) -> dict:
    from deepiot.cli.compress import compression_config

    cfg = compose_config(
        [*LSTM, *QUICK, *COMPRESS_QUICK, f"data.dataset.path={assets['good']}", "paths.output_dir=/x"]
    )
    return compression_config(cfg).to_dict()


# ---------------------------------------------------------------------------------------------- the run


def compose_for(command: str, overrides: list[str], folder: Path):
    GlobalHydra.instance().clear()
    if command == "export":
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="export", overrides=overrides)
    paths = [f"paths.output_dir={folder / 'run'}", f"paths.original_dir={folder / 'original'}"]
    return compose_config([*paths, *overrides])


RUNNERS = {"train": train, "compress": run_compress, "export": run_export}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its content (folders as "dir")."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        files[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("case_id", list(ALL_CASES))
def test_bad_input_is_refused_with_one_message(case_id, assets, tmp_path, capsys, monkeypatch):
    case = ALL_CASES[case_id]
    monkeypatch.chdir(tmp_path)
    prepare(case_id, tmp_path, assets)
    names = {**assets, "tmp": str(tmp_path)}
    overrides = [override.format(**names) for override in case.overrides]
    shared_before, before = snapshot(Path(assets["folder"])), snapshot(tmp_path)
    cfg = compose_for(case.command, overrides, tmp_path)
    program = f"deepiot-{case.command}"
    with pytest.raises(SystemExit) as stopped, reported_errors(program):
        RUNNERS[case.command](cfg)
    output = capsys.readouterr()
    assert stopped.value.code == 2
    assert output.err.startswith(f"{program}: error: "), output.err
    assert output.err.count(f"{program}: error:") == 1
    assert "Traceback" not in output.err + output.out
    for pattern in case.patterns:
        assert re.search(pattern, output.err, flags=re.S), (pattern, output.err)
    # nothing written (no model, state or report; at most the logs of a diverged run) and nothing lost
    after = snapshot(tmp_path)
    written = set(after) - set(before)
    assert all(path in case.may_write or path.startswith(case.may_write) for path in written), written
    assert {path: after.get(path) for path in before} == before
    assert snapshot(Path(assets["folder"])) == shared_before


def test_the_battery_is_large():
    assert len(ALL_CASES) >= 70


# ---------------------------------------------------------------------------------------------- real command lines

COMMAND_LINES = {
    "deepiot-compress max_iterations=2.5": (
        ["deepiot-compress", "compress.max_iterations=2.5"],
        "compress.max_iterations=2.5 has the wrong type: expected an integer",
    ),
    "deepiot-train npz with LeNet-5": (
        ["deepiot-train", "data=npz", "data.dataset.path={good}"],
        r"model deepiot.models.LeNet5 does not fit dataset 'good'",
    ),
    "deepiot-compress npz fractions": (
        [
            "deepiot-compress",
            *LSTM,
            "data.dataset.path={good}",
            "data.dataset.val_frac=0.9",
            "data.dataset.test_frac=0.5",
        ],
        r"data.dataset.val_frac=0.9 and data.dataset.test_frac=0.5 are invalid: expected",
    ),
    "deepiot-export out_dir is a file": (
        ["deepiot-export", "checkpoint={model}", "out_dir={tmp}/occupied"],
        "is an existing file, not a folder",
    ),
}


@pytest.mark.parametrize("case_id", list(COMMAND_LINES))
def test_real_command_line_refuses_with_one_message(case_id, assets, tmp_path):
    command, pattern = COMMAND_LINES[case_id]
    (tmp_path / "occupied").write_text("someone's file\n")
    arguments = [argument.format(**assets, tmp=tmp_path) for argument in command]
    if command[0] != "deepiot-export":
        arguments += [f"hydra.run.dir={tmp_path / 'run'}", f"paths.original_dir={tmp_path / 'original'}"]
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"{command[0]}: error: "), done.stderr[-2000:]
    assert re.search(pattern, done.stderr), done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Error executing job" not in done.stderr
    assert not (tmp_path / "original").exists()
    assert sorted(path.name for path in (tmp_path / "run").glob("*")) in (
        [],
        [".hydra"],
        [".hydra", f"{command[0].split('-')[1]}.log"],
    )
    assert (tmp_path / "occupied").read_text() == "someone's file\n"
