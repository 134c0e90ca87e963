"""ExecuTorch export (deepiot.edge, formats=[executorch]): every reference model and a sliced one lower to a
batch-1 XNNPACK program that ExecuTorch's runtime runs within the ONNX check's tolerance; models that cannot be
lowered, and a missing ExecuTorch, end in an ExportError that names the cause and write nothing."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from deepiot.checkpoint import save_checkpoint
from deepiot.cli import CONFIG_DIR
from deepiot.cli.export import run_export
from deepiot.export import RELATIVE_TOLERANCE, TOLERANCE, ExportError, export_model
from deepiot.models import VGG, DeepSense, LeNet5, LeNet300, LSTMClassifier, build_model
from deepiot.structure import SlicingPlan, Structure, slice_model


@pytest.fixture
def executorch():
    return pytest.importorskip("executorch")


# Tiny widths and short windows: torch.export unrolls recurrent layers step by step (export time grows with T).
REFERENCE_MODELS = {
    "lenet5": (lambda: LeNet5(conv1_channels=4, conv2_channels=6, fc_features=16), (1, 28, 28)),
    "lenet300": (lambda: LeNet300(hidden1=20, hidden2=10), (1, 28, 28)),
    "vgg": (lambda: VGG(widths=(8, "M", 16, "M"), classifier_features=16), (3, 32, 32)),
    "lstm-bidir": (
        lambda: LSTMClassifier(input_shape=(5, 6), hidden_size=6, num_layers=2, bidirectional=True),
        (5, 6),
    ),
    "deepsense-gru": (lambda: DeepSense(input_shape=(16, 6), conv_channels=8, gru_hidden=6), (16, 6)),
}


def read_manifest(out_dir) -> dict:
    return json.loads((out_dir / "manifest.json").read_text())


def run_pte(path, inputs: torch.Tensor) -> np.ndarray:
    """The .pte in ExecuTorch's runtime, window by window, independent of deepiot.edge."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return np.concatenate([np.array(method.execute([row[None].contiguous()])[0]) for row in inputs])


def assert_describes_program(manifest: dict, out_dir, model: nn.Module, shape) -> None:
    entry = manifest["executorch"]
    assert entry["file"] == "model.pte" and entry["batch_size"] == 1
    assert entry["bytes"] == (out_dir / "model.pte").stat().st_size == manifest["files"]["model.pte"]["bytes"]
    assert entry["delegates"].get("XnnpackBackend", 0) >= 1
    # the arena holds at least the batch-1 input and output (float32)
    io_bytes = 4 * (int(np.prod(shape)) + manifest["output"][0]["shape"][1])
    assert entry["planned_memory_bytes"] >= io_bytes
    assert entry["planned_memory_bytes"] == sum(entry["planned_buffers_bytes"])
    assert manifest["check"]["tolerance"]["executorch"] == {
        "abs": TOLERANCE["executorch"],
        "rel": RELATIVE_TOLERANCE["executorch"],
    }
    assert manifest["check"]["max_abs_diff"]["executorch"] <= TOLERANCE["executorch"]
    inputs = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    np.testing.assert_allclose(run_pte(out_dir / "model.pte", inputs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_reference_models_export_to_executorch_and_match_pytorch(tmp_path, executorch, name):
    build, shape = REFERENCE_MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    result = export_model(model, torch.randn(1, *shape), tmp_path, manifest_extra={}, formats=["executorch"])
    assert result.max_abs_diff.keys() == {"executorch"}
    manifest = read_manifest(tmp_path)
    assert set(manifest["files"]) == {"model.pte"}
    assert_describes_program(manifest, tmp_path, model, shape)
    if name in ("lenet5", "lenet300", "vgg"):
        # feed-forward: a single XNNPACK call, nothing left on ExecuTorch's CPU kernels
        assert manifest["executorch"]["delegates"] == {"XnnpackBackend": 1}
        assert manifest["executorch"]["portable_operators"] == []


def test_sliced_deepsense_exports_to_executorch(tmp_path, executorch):
    torch.manual_seed(0)
    model = DeepSense(input_shape=(16, 6), conv_channels=8, gru_hidden=6).eval()
    example = torch.randn(1, 16, 6)
    structure = Structure.from_model(model, example)
    kept = {group.name: list(range(0, group.size, 2)) for group in structure.groups}
    sliced = slice_model(model, structure, kept).eval()
    export_model(sliced, example, tmp_path, manifest_extra={}, formats=["executorch"])
    manifest = read_manifest(tmp_path)
    assert manifest["cost"]["params"] < sum(parameter.numel() for parameter in model.parameters())
    assert_describes_program(manifest, tmp_path, sliced, (16, 6))


LENET300_CONFIG = {
    "_target_": "deepiot.models.LeNet300",
    "hidden1": 20,
    "hidden2": 10,
    "input_shape": [1, 28, 28],
    "num_classes": 10,
}


def test_cli_exports_all_three_formats_of_a_sliced_checkpoint(tmp_path, executorch):
    torch.manual_seed(0)
    model = build_model(LENET300_CONFIG).eval()
    checkpoint = tmp_path / "run" / "model.pt"
    save_checkpoint(
        {
            "kind": "trained_model",
            "model_config": LENET300_CONFIG,
            "state_dict": model.state_dict(),
            "metrics": {},
            "config": {},
        },
        checkpoint,
    )
    structure = Structure.from_model(model, torch.randn(1, 1, 28, 28))
    kept = {group.name: list(range(0, group.size, 3)) for group in structure.groups}
    plan_path = tmp_path / "slicing_plan.json"
    SlicingPlan.from_structure(structure, LENET300_CONFIG, kept).save(plan_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="export",
            overrides=[
                f"checkpoint={checkpoint}",
                f"plan={plan_path}",
                f"out_dir={tmp_path / 'out'}",
                "formats=[torchscript,onnx,executorch]",
                "onnx_exporter=torchscript",
            ],
        )
    result = run_export(cfg)
    assert result.max_abs_diff.keys() == {"torchscript", "onnx", "executorch"}
    assert result.paths["executorch"] == tmp_path / "out" / "model.pte"
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["files"]) == {"model.ts", "model.onnx", "model.pte", "slicing_plan.json"}
    sliced = slice_model(model, structure, kept)
    assert_describes_program(manifest, tmp_path / "out", sliced, (1, 28, 28))


class Inverse(nn.Module):
    """torch.linalg.inv: not in the Core ATen opset ExecuTorch's edge dialect accepts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x @ x.transpose(-1, -2) + torch.eye(x.shape[-1]))


class ValueBranch(nn.Module):
    """Python control flow on a tensor value: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def test_operator_executorch_cannot_take_is_named_and_nothing_is_written(tmp_path, executorch):
    with pytest.raises(ExportError, match=r"Inverse cannot be exported to ExecuTorch: .*aten\.linalg_inv_ex"):
        export_model(
            Inverse(), torch.randn(1, 4, 4), tmp_path / "out", manifest_extra={}, formats=["executorch"]
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_value_dependent_branch_is_reported_with_a_hint(tmp_path, executorch):
    with pytest.raises(
        ExportError, match=r"ValueBranch cannot be exported.*torch\.export\.export.*torch\.where"
    ):
        export_model(
            ValueBranch(), torch.randn(1, 4), tmp_path / "out", manifest_extra={}, formats=["executorch"]
        )


def test_failed_lowering_keeps_the_previous_export(tmp_path, executorch):
    export_model(nn.Linear(4, 4), torch.randn(1, 4, 4), tmp_path, manifest_extra={}, formats=["torchscript"])
    before = read_manifest(tmp_path)
    with pytest.raises(ExportError, match="aten.linalg_inv_ex"):
        export_model(Inverse(), torch.randn(1, 4, 4), tmp_path, manifest_extra={}, formats=["executorch"])
    assert read_manifest(tmp_path) == before
    assert not (tmp_path / "model.pte").exists()


def test_missing_executorch_is_an_export_error_with_the_install_command(tmp_path, monkeypatch):
    for module in (
        "executorch.exir",
        "executorch.runtime",
        "executorch.backends.xnnpack.partition.xnnpack_partitioner",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ExportError, match=r"needs ExecuTorch.*pip install 'deepiot\[edge\]'"):
        export_model(
            nn.Linear(3, 2), torch.randn(1, 3), tmp_path / "out", manifest_extra={}, formats=["executorch"]
        )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ latency and int8


def test_export_times_the_program_at_batch_one(tmp_path, executorch):
    export_model(nn.Linear(6, 3), torch.randn(1, 6), tmp_path, manifest_extra={}, formats=["executorch"])
    latency = read_manifest(tmp_path)["executorch"]["latency"]
    assert latency["batch_size"] == 1 and latency["threads"] == 1 and latency["repeats"] == 100
    assert 0 < latency["p10_ms"] <= latency["median_ms"] <= latency["p90_ms"]


def test_unchecked_export_runs_no_runtime(tmp_path, executorch):
    export_model(
        nn.Linear(6, 3), torch.randn(1, 6), tmp_path, manifest_extra={}, formats=["executorch"], check=False
    )
    manifest = read_manifest(tmp_path)
    assert manifest["check"] is None and "latency" not in manifest["executorch"]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, trained_model, data):
    pytest.importorskip("executorch")
    from deepiot.edge import export_int8_executorch

    out_dir = tmp_path_factory.mktemp("int8")
    export_model(trained_model, torch.randn(1, 1, 28, 28), out_dir, manifest_extra={}, formats=["executorch"])
    return export_int8_executorch(trained_model, out_dir, data[0], data[2], windows=64, latency_repeats=20)


def test_int8_program_is_smaller_and_as_accurate_as_fp32(int8_export, trained_model, data):
    report = int8_export.report
    out_dir = int8_export.path.parent
    assert int8_export.path.name == "model.int8.pte"
    assert report["fp32"]["bytes"] == (out_dir / "model.pte").stat().st_size
    assert report["int8"]["bytes"] == int8_export.path.stat().st_size
    assert report["size_ratio"] > 3  # int8 weights (+ per-channel scales) against float32
    assert report["accuracy_drop_points"] <= 1.0 and report["check"]["passed"]
    assert report["output"]["top1_agreement"] >= 0.95
    assert report["int8"]["delegates"] == {"XnnpackBackend": 1}
    assert report["int8"]["planned_memory_bytes"] > 0
    assert report["int8"]["latency"]["median_ms"] > 0 and report["fp32"]["latency"]["repeats"] == 20
    assert report["calibration"]["windows"] == 64 and report["calibration"]["split"] == "train"
    # the fp32 accuracy is the fp32 program's, which is PyTorch's
    inputs, labels = data[2].tensors
    with torch.no_grad():
        expected = (trained_model(inputs).argmax(1) == labels).float().mean().item()
    assert report["fp32"]["test_accuracy"] == pytest.approx(expected)


def test_manifest_records_the_int8_program(int8_export):
    manifest = read_manifest(int8_export.path.parent)
    assert manifest["executorch_int8"]["accuracy_drop_points"] == int8_export.report["accuracy_drop_points"]
    assert manifest["files"]["model.int8.pte"]["bytes"] == int8_export.path.stat().st_size


def test_int8_past_the_bound_is_refused_and_leaves_no_file(tmp_path, int8_export, trained_model, data):
    from deepiot.edge import export_int8_executorch

    for name in ("model.pte", "manifest.json"):
        shutil.copy(int8_export.path.parent / name, tmp_path / name)
    before = read_manifest(tmp_path)
    with pytest.raises(ExportError, match="int8 ExecuTorch program refused"):
        export_int8_executorch(
            trained_model, tmp_path, data[0], data[2], windows=64, max_drop_points=-1.0, latency_repeats=1
        )
    assert not (tmp_path / "model.int8.pte").exists()
    assert read_manifest(tmp_path) == before


def test_int8_needs_the_fp32_program(tmp_path, executorch, trained_model, data):
    from deepiot.edge import export_int8_executorch

    with pytest.raises(ExportError, match=r"formats=\[...,executorch\] first"):
        export_int8_executorch(trained_model, tmp_path, data[0])


def test_recurrent_int8_program_without_test_split(tmp_path, executorch):
    from torch.utils.data import TensorDataset

    from deepiot.edge import export_int8_executorch

    torch.manual_seed(0)
    model = DeepSense(input_shape=(8, 6), conv_channels=8, gru_hidden=6).eval()  # 2 GRU steps
    windows = TensorDataset(torch.randn(48, 8, 6), torch.zeros(48, dtype=torch.long))
    export_model(model, torch.randn(1, 8, 6), tmp_path, manifest_extra={}, formats=["executorch"])
    result = export_int8_executorch(model, tmp_path, windows, None, windows=32, latency_repeats=10)
    report = result.report
    assert report["output"]["windows"] == 16  # the 16 training windows not drawn for calibration
    assert "test_accuracy" not in report["int8"] and report["check"]["passed"]
    assert report["output"]["relative_error"] < 0.1
    assert report["int8"]["delegates"]["XnnpackBackend"] >= 1


def test_cli_int8_with_executorch_writes_both_int8_files(
    tmp_path, executorch, trained_model, data, monkeypatch
):
    import deepiot.quantize

    checkpoint = tmp_path / "run" / "model.pt"
    save_checkpoint(
        {
            "kind": "trained_model",
            "model_config": {**LENET300_CONFIG, "hidden1": 60, "hidden2": 30},
            "state_dict": trained_model.state_dict(),
            "metrics": {},
            "config": {},
        },
        checkpoint,
    )
    monkeypatch.setattr(deepiot.quantize, "checkpoint_datasets", lambda path: (data[0], data[2]))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="export",
            overrides=[
                f"checkpoint={checkpoint}",
                "formats=[onnx,executorch]",
                "onnx_exporter=torchscript",
                "int8=true",
                "int8_windows=32",
            ],
        )
    result = run_export(cfg)
    assert result.paths["onnx_int8"].name == "model.int8.onnx"
    assert result.paths["executorch_int8"].name == "model.int8.pte"
    manifest = read_manifest(checkpoint.parent / "export")
    assert {"int8", "executorch_int8"} <= set(manifest)
    assert {"model.onnx", "model.int8.onnx", "model.pte", "model.int8.pte"} <= set(manifest["files"])
