from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from deepiot.cost.counter import measure_cost
from deepiot.export import (
    RELATIVE_TOLERANCE,
    TOLERANCE,
    ExportError,
    auto_onnx_exporters,
    export_model,
    input_layout,
    manifest_entries,
)
from deepiot.models import DeepSense, LeNet5, LSTMClassifier

SMALL_MODELS = [
    (LeNet5(conv1_channels=4, conv2_channels=6, fc_features=16), (1, 28, 28)),
    (LSTMClassifier(input_shape=(24, 6), hidden_size=10, num_layers=2, bidirectional=True), (24, 6)),
    (DeepSense(input_shape=(32, 6), conv_channels=8, gru_hidden=12), (32, 6)),
]
SMALL_IDS = ["lenet5", "lstm-bidir", "deepsense"]


class BatchSizeDependent(nn.Module):
    """Python control flow on the batch size: tracing bakes in the branch taken at export time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] == 2 else x


def read_manifest(out_dir) -> dict:
    return json.loads((out_dir / "manifest.json").read_text())


def export_fast(model, example, out_dir, **kwargs):
    """The TorchScript-based ONNX exporter: same checks, a fraction of the dynamo exporter's time."""
    return export_model(model, example, out_dir, manifest_extra={}, onnx_exporter="torchscript", **kwargs)


@pytest.mark.parametrize(("model", "shape"), SMALL_MODELS, ids=SMALL_IDS)
def test_exports_match_pytorch_and_manifest_describes_them(tmp_path, model, shape):
    example = torch.randn(1, *shape)
    result = export_fast(model, example, tmp_path / "export")
    assert result.max_abs_diff.keys() == {"torchscript", "onnx"}
    assert all(result.max_abs_diff[name] <= TOLERANCE[name] for name in result.max_abs_diff)
    manifest = read_manifest(tmp_path / "export")
    assert manifest["input"] == [{"name": "input", "shape": ["batch", *shape], "dtype": "float32"}]
    assert manifest["cost"] == measure_cost(model, example)._asdict()
    assert manifest["onnx"]["exporter"] == "torchscript"
    assert isinstance(manifest["onnx"]["opset"], int)
    for name, described in manifest["files"].items():
        content = (tmp_path / "export" / name).read_bytes()
        assert described == {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    assert set(manifest["files"]) == {"model.ts", "model.onnx"}


def test_dynamo_exporter_exports_a_recurrent_model(tmp_path):
    model = LSTMClassifier(input_shape=(12, 6), hidden_size=6, num_layers=2)
    example = torch.randn(1, 12, 6)
    result = export_model(
        model, example, tmp_path, manifest_extra={}, formats=["onnx"], onnx_exporter="dynamo"
    )
    assert read_manifest(tmp_path)["onnx"]["exporter"] == "dynamo"
    assert result.max_abs_diff["onnx"] <= TOLERANCE["onnx"]


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        (LSTMClassifier(input_shape=(12, 6), hidden_size=6, num_layers=2), (12, 6), "torchscript"),
        (nn.Sequential(nn.Conv1d(12, 4, 3), nn.Flatten(), nn.Linear(16, 3)), (12, 6), "dynamo"),
    ],
    ids=["recurrent", "convolutional"],
)
def test_auto_exporter_is_torchscript_based_for_recurrent_models_only(tmp_path, model, shape, expected):
    assert auto_onnx_exporters(model)[0] == expected
    result = export_model(model, torch.randn(1, *shape), tmp_path, manifest_extra={}, formats=["onnx"])
    manifest = read_manifest(tmp_path)
    assert manifest["onnx"]["exporter"] == expected
    assert manifest["onnx"]["exporter_choice"].startswith(f"auto: {expected} then ")
    assert result.max_abs_diff["onnx"] <= TOLERANCE["onnx"]


@pytest.mark.slow
def test_dynamo_exporter_exports_deepsense(tmp_path):
    model = DeepSense()
    example = torch.randn(1, 128, 6)
    result = export_model(
        model, example, tmp_path, manifest_extra={}, formats=["onnx"], onnx_exporter="dynamo"
    )
    assert read_manifest(tmp_path)["onnx"]["exporter"] == "dynamo"
    assert result.max_abs_diff["onnx"] <= TOLERANCE["onnx"]


ISOLATED_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class RefuseDeepiot(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "deepiot":
                raise ImportError("the exported files must load without deepiot")

    sys.meta_path.insert(0, RefuseDeepiot())
    import numpy as np, onnxruntime, torch

    inputs, expected = np.load("inputs.npy"), np.load("expected.npy")
    session = onnxruntime.InferenceSession("export/model.onnx", providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    torchscript_outputs = torch.jit.load("export/model.ts")(torch.from_numpy(inputs)).detach().numpy()
    print(json.dumps({
        "onnx": float(np.abs(onnx_outputs - expected).max()),
        "torchscript": float(np.abs(torchscript_outputs - expected).max()),
        "deepiot_modules": [name for name in sys.modules if name.startswith("deepiot")],
    }))
    """
)


def test_exports_load_in_a_process_without_deepiot(tmp_path):
    model, shape = SMALL_MODELS[2]  # conv + GRU: the hardest of the small models
    export_fast(model, torch.randn(1, *shape), tmp_path / "export")
    inputs = torch.randn(5, *shape)
    with torch.no_grad():
        expected = model.eval()(inputs)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    np.save(tmp_path / "expected.npy", expected.numpy())
    completed = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED_LOADER],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["deepiot_modules"] == []
    assert report["onnx"] <= TOLERANCE["onnx"]
    assert report["torchscript"] <= TOLERANCE["torchscript"]


def test_failed_check_leaves_previous_export_intact(tmp_path):
    out_dir = tmp_path / "export"
    export_fast(nn.Linear(4, 3), torch.randn(1, 4), out_dir)
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_fast(BatchSizeDependent(), torch.randn(1, 4), out_dir)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # no staging folder left


def test_check_allows_float32_rounding_relative_to_large_outputs(tmp_path):
    torch.manual_seed(0)
    layers = [nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20)  # logits in the thousands: ONNX Runtime's rounding is ~1e-3 absolute there
        assert model(torch.randn(3, 256)).abs().max() > 1000
    result = export_fast(model, torch.randn(1, 256), tmp_path)
    assert result.max_abs_diff["onnx"] < 1e-5 * 2000  # float32 rounding, not a wrong graph
    tolerance = read_manifest(tmp_path)["check"]["tolerance"]
    assert tolerance == {
        name: {"abs": TOLERANCE[name], "rel": RELATIVE_TOLERANCE[name]} for name in tolerance
    }


def test_staging_left_by_a_killed_export_is_removed_by_the_next(tmp_path):
    out_dir = tmp_path / "export"
    dead = tmp_path / ".export.4194305.k1lled.tmp"  # above Linux's largest pid: no such process
    live = tmp_path / f".export.{os.getpid()}.running.tmp"  # an export still running in a live process
    other = tmp_path / ".elsewhere.4194305.k1lled.tmp"  # another export folder's staging
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    export_fast(nn.Linear(4, 3), torch.randn(1, 4), out_dir)
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["export", live.name, other.name])


def test_unchecked_export_records_no_differences(tmp_path):
    result = export_fast(BatchSizeDependent(), torch.randn(1, 4), tmp_path, check=False)
    assert result.max_abs_diff == {}
    assert read_manifest(tmp_path)["check"] is None


def test_reexport_with_fewer_formats_removes_stale_files(tmp_path):
    model = nn.Linear(4, 3)
    export_fast(model, torch.randn(1, 4), tmp_path)
    result = export_fast(model, torch.randn(1, 4), tmp_path, formats=["torchscript"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json", "model.ts"]
    assert set(result.paths) == {"torchscript", "manifest"}
    assert set(read_manifest(tmp_path)["files"]) == {"model.ts"}


def test_manifest_extra_and_extra_files_are_recorded(tmp_path):
    extra = {"class_names": ["walk", "sit"], "metrics": {"test_accuracy": 0.91}}
    export_model(
        nn.Linear(4, 2),
        torch.randn(1, 4),
        tmp_path,
        manifest_extra=extra,
        formats=["torchscript"],
        extra_files={"slicing_plan.json": b"{}"},
    )
    manifest = read_manifest(tmp_path)
    assert manifest["class_names"] == ["walk", "sit"]
    assert manifest["metrics"] == {"test_accuracy": 0.91}
    assert manifest["files"]["slicing_plan.json"]["bytes"] == 2


def test_manifest_entries_describe_the_model_its_data_and_its_origin():
    model_config = {"_target_": "deepiot.models.LSTMClassifier", "input_shape": (16, 6), "num_classes": 3}
    data = {
        "name": "hapt",
        "class_names": ["walk", "sit", "lie"],
        "normalization": {"mean": [0.0], "std": [1.0]},
    }
    entries = manifest_entries(
        model_config, {"test_accuracy": 0.9}, {**data, "channel_axis": -1}, sliced=True, source="a.pt"
    )
    assert entries == {
        "model_config": {**model_config, "input_shape": [16, 6]},  # plain JSON values (tuples as lists)
        "input_layout": "NTC",
        "normalization": {"mean": [0.0], "std": [1.0], "channel_axis": -1},
        "class_names": ["walk", "sit", "lie"],
        "dataset": "hapt",
        "metrics": {"test_accuracy": 0.9},
        "slicing_plan": "slicing_plan.json",
        "source": "a.pt",
    }
    unknown = manifest_entries({"input_shape": [1, 28, 28]}, {}, None, sliced=False)
    assert set(unknown) == set(entries)  # every manifest has the same entries; unknown ones are None
    assert (
        unknown["normalization"],
        unknown["class_names"],
        unknown["dataset"],
        unknown["slicing_plan"],
    ) == (None,) * 4
    assert unknown["input_layout"] == "N + 3 sample axes, channels at sample axis None"
    assert manifest_entries({"_target_": "mypkg.Net"}, {}, sliced=True)["input_layout"] is None


def test_restores_training_mode(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    export_fast(model, torch.randn(1, 4), tmp_path)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"formats": ["tflite"]}, "subset of"),
        ({"formats": []}, "non-empty"),
        ({"manifest_extra": {"cost": 1}}, "must not override"),
        ({"extra_files": {"model.onnx": b""}}, "plain names other than"),
        ({"onnx_exporter": "tvm"}, "onnx_exporter must be"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, kwargs, message):
    arguments = {"manifest_extra": {}, **kwargs}
    with pytest.raises(ExportError, match=message):
        export_model(nn.Linear(4, 2), torch.randn(1, 4), tmp_path / "export", **arguments)
    assert not (tmp_path / "export").exists()


def test_non_tensor_inputs_are_refused(tmp_path):
    with pytest.raises(ExportError, match="leading batch axis"):
        export_model(nn.Identity(), (3,), tmp_path, manifest_extra={})


@pytest.mark.parametrize(
    ("shape", "channel_axis", "layout"),
    [((1, 28, 28), 0, "NCHW"), ((128, 6), -1, "NTC"), ((128, 6), 1, "NTC"), ((10,), 0, "NF")],
)
def test_input_layout(shape, channel_axis, layout):
    assert input_layout(shape, channel_axis) == layout
