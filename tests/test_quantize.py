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
    with pytest.raises(ExportError, match=r"add onnx to formats \(or executorch\)"):
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


def test_export_records_its_check_against_fp32_on_heldout_windows(int8, data):
    report = int8.report
    assert report["check"] == {"heldout": "test split", "max_drop_points": 1.0, "passed": True}
    assert report["output"]["windows"] == len(data[2])
    assert 0.0 <= report["output"]["relative_error"] < 0.1  # the bound this CPU must hold
    assert report["output"]["top1_agreement"] >= 0.95
    assert report["calibration"]["weights"] == "uint8 per-channel"


def test_int8_past_the_bound_is_refused_and_leaves_no_file(tmp_path, trained_model, data):
    export_model(
        trained_model, torch.randn(1, 1, 28, 28), tmp_path, manifest_extra={}, formats=["onnx"],
        onnx_exporter="torchscript",
    )  # fmt: skip
    with pytest.raises(ExportError, match=r"int8 refused: .* beyond the bound of -100\.0 points"):
        export_int8(tmp_path, data[0], data[2], windows=16, max_drop_points=-100.0)
    assert not (tmp_path / INT8_NAME).exists()
    assert "int8" not in json.loads((tmp_path / "manifest.json").read_text())


def test_without_a_test_split_int8_is_judged_on_training_windows_not_used_for_calibration(
    tmp_path, trained_model, data
):
    from deepiot.quantize import heldout_windows

    train = torch.utils.data.TensorDataset(*(tensor[:80] for tensor in data[0].tensors))
    heldout = heldout_windows(train, None, count=64, seed=0)
    calibration = sample_windows(train, 64, seed=0)
    assert len(heldout) == 16
    for window in heldout.tensors[0].numpy():  # none of them was a calibration window
        assert not np.any(
            np.all(np.isclose(calibration, window[None]), axis=tuple(range(1, calibration.ndim)))
        )
    with pytest.raises(ExportError, match="all 80 training windows were drawn for calibration"):
        heldout_windows(train, None, count=80, seed=0)


def emulated_cpu_outputs(folder, inputs: np.ndarray, cpu: str) -> dict[str, np.ndarray]:
    """fp32 and int8 outputs of the export in `folder`, computed by ONNX Runtime in this Python under
    qemu-user emulating `cpu` (so its kernels dispatch as on that CPU)."""
    import shutil
    import subprocess
    import sys

    np.save(folder / "inputs.npy", inputs)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "folder = sys.argv[1]; x = np.load(folder + '/inputs.npy')\n"
        "for name in ('model.onnx', 'model.int8.onnx'):\n"
        "    options = ort.SessionOptions(); options.intra_op_num_threads = 1\n"
        "    session = ort.InferenceSession(folder + '/' + name, options, providers=['CPUExecutionProvider'])\n"
        "    np.save(folder + '/' + name + '.npy', session.run(None, {session.get_inputs()[0].name: x})[0])\n"
    )
    subprocess.run(
        [shutil.which("qemu-x86_64"), "-cpu", cpu, sys.executable, "-c", script, str(folder)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return {name: np.load(folder / f"{name}.npy") for name in ("model.onnx", INT8_NAME)}


@pytest.mark.skipif(
    __import__("shutil").which("qemu-x86_64") is None,
    reason="needs qemu-user (apt-get install qemu-user; scripts/test.sh installs it when run as root)",
)
@pytest.mark.parametrize("cpu", ["EPYC-Rome", "Haswell"])  # AVX2 without VNNI: where u8s8 kernels saturate
def test_int8_holds_its_bound_on_an_emulated_avx2_cpu_without_vnni(tmp_path, cpu):
    from deepiot.models import LSTMClassifier

    torch.manual_seed(0)
    model = LSTMClassifier(input_shape=(16, 6), hidden_size=12, num_layers=2).eval()
    inputs = torch.randn(40, 16, 6)
    export_model(
        model, inputs[:1], tmp_path, manifest_extra={}, formats=["onnx"], onnx_exporter="torchscript"
    )
    train = torch.utils.data.TensorDataset(inputs, torch.zeros(40, dtype=torch.long))
    export_int8(tmp_path, train, train, windows=32)
    native = {name: make_session(tmp_path / name).run(None, {"input": inputs[:8].numpy()})[0]
              for name in ("model.onnx", INT8_NAME)}  # fmt: skip
    emulated = emulated_cpu_outputs(tmp_path, inputs[:8].numpy(), cpu)
    fp32, int8 = emulated["model.onnx"], emulated[INT8_NAME]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()
    assert np.abs(int8 - native[INT8_NAME]).max() <= 1e-6  # the same int8 result as on this CPU
