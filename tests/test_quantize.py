"""int8 export: ONNX Runtime static quantisation calibrated on training windows, recorded in the manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from deepiot.cli.export import run_export
from deepiot.device.ort_profile import make_session
from deepiot.export import INT8_NAME, ExportError, export_model
from deepiot.quantize import WindowReader, checkpoint_datasets, export_int8, sample_windows


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_model):
    folder = tmp_path_factory.mktemp("export")
    export_model(
        trained_model,
        torch.randn(1, 1, 28, 28),
        folder,
        manifest_extra={},
        formats=["onnx"],
        onnx_exporter="torchscript",
    )
    return folder


@pytest.fixture(scope="module")
def int8(exported, data):
    return export_int8(exported, data[0], data[2], windows=64)


def test_int8_model_is_smaller_and_agrees_with_fp32(exported, int8, data):
    report = int8.report
    assert int8.path == exported / INT8_NAME
    assert report["int8"]["weight_bytes"] * 3 < report["fp32"]["weight_bytes"]  # int8 weights + scales
    assert report["int8"]["bytes"] < report["fp32"]["bytes"]
    assert report["accuracy_drop_points"] <= 2.0
    inputs = data[2].tensors[0][:64].numpy()
    logits = {
        name: make_session(exported / name).run(None, {"input": inputs})[0]
        for name in ("model.onnx", INT8_NAME)
    }
    agreement = (logits["model.onnx"].argmax(1) == logits[INT8_NAME].argmax(1)).mean()
    assert agreement >= 0.9


def test_manifest_records_the_int8_file_and_its_comparison(exported, int8):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["int8"]["calibration"]["split"] == "train"
    assert manifest["int8"]["calibration"]["windows"] == 64
    digest = hashlib.sha256((exported / INT8_NAME).read_bytes()).hexdigest()
    assert manifest["files"][INT8_NAME] == {"sha256": digest, "bytes": (exported / INT8_NAME).stat().st_size}
    assert manifest["int8"]["int8"]["test_accuracy"] == pytest.approx(
        manifest["int8"]["fp32"]["test_accuracy"] - manifest["int8"]["accuracy_drop_points"] / 100
    )


def test_calibration_reader_feeds_training_windows_in_batches(data):
    windows = sample_windows(data[0], 70, seed=3)
    assert windows.shape == (70, 1, 28, 28) and windows.dtype == np.float32
    train = data[0].tensors[0].numpy()
    assert all(any(np.array_equal(window, row) for row in train) for window in windows[:5])
    reader = WindowReader("input", windows, batch_size=32)
    sizes = [len(batch["input"]) for batch in iter(reader.get_next, None)]
    assert sizes == [32, 32, 6]
    reader.rewind()
    assert reader.get_next() is not None


def test_reexport_removes_a_stale_int8_file(tmp_path, trained_model, data):
    export_model(
        trained_model,
        torch.randn(1, 1, 28, 28),
        tmp_path,
        manifest_extra={},
        formats=["onnx"],
        onnx_exporter="torchscript",
    )
    (tmp_path / INT8_NAME).write_bytes(b"stale")
    export_model(
        trained_model,
        torch.randn(1, 1, 28, 28),
        tmp_path,
        manifest_extra={},
        formats=["onnx"],
        onnx_exporter="torchscript",
    )
    assert not (tmp_path / INT8_NAME).exists()


def test_int8_needs_an_onnx_export(tmp_path, data):
    with pytest.raises(ExportError, match="export the model to ONNX first"):
        export_int8(tmp_path, data[0])
    config = OmegaConf.create(
        {
            "checkpoint": str(tmp_path / "model.pt"),
            "plan": None,
            "out_dir": None,
            "formats": ["torchscript"],
            "check": True,
            "onnx_exporter": "auto",
            "int8": True,
            "int8_windows": 8,
        }
    )
    with pytest.raises(ExportError, match="add onnx to formats"):
        run_export(config)


def test_checkpoint_without_a_dataset_says_how_to_calibrate(tmp_path, trained_model):
    from deepiot.checkpoint import save_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(
        {
            "kind": "trained_model",
            "model_config": {"_target_": "deepiot.models.LeNet300", "hidden1": 60, "hidden2": 30},
            "state_dict": trained_model.state_dict(),
        },
        path,
    )
    with pytest.raises(ExportError, match="does not record its dataset"):
        checkpoint_datasets(path)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_weights_are_stored_int8_and_still_compute_the_model(tmp_path, bidirectional):
    import onnx

    from deepiot.models import LSTMClassifier

    torch.manual_seed(0)
    model = LSTMClassifier(
        input_shape=(16, 6), hidden_size=12, num_layers=2, bidirectional=bidirectional
    ).eval()
    inputs = torch.randn(40, 16, 6)
    train = torch.utils.data.TensorDataset(inputs, torch.zeros(40, dtype=torch.long))
    export_model(
        model, inputs[:1], tmp_path, manifest_extra={}, formats=["onnx"], onnx_exporter="torchscript"
    )
    result = export_int8(tmp_path, train, train, windows=32)
    graph = onnx.load(str(result.path)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    recurrent = [node for node in graph.node if node.op_type == "LSTM"]
    assert len(recurrent) == 2
    for node in recurrent:
        for name in node.input[1:3]:  # W and R now come out of a DequantizeLinear of an int8 tensor
            producer = next(n for n in graph.node if name in n.output)
            assert producer.op_type == "DequantizeLinear"
            assert initializers[producer.input[0]].data_type == onnx.TensorProto.INT8
    fp32 = make_session(tmp_path / "model.onnx").run(None, {"input": inputs[:8].numpy()})[0]
    int8 = make_session(result.path).run(None, {"input": inputs[:8].numpy()})[0]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()
    assert result.report["weight_size_ratio"] > 2.0  # tiny model: biases, scales and the logit layer weigh in
