"""LiteRT export (deepiot.litert, formats=[litert]): a feed-forward and a recurrent reference model convert to a
batch-1 model.tflite that LiteRT's interpreter runs within the ONNX check's tolerance; a missing LiteRT ends in an
ExportError with the install command before anything is written. The conversion tests need the [litert] extra
(its own venv, see pyproject.toml) and are skipped without it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from deepiot.export import TOLERANCE, ExportError, export_model
from deepiot.models import DeepSense, LeNet5


@pytest.fixture
def litert():
    pytest.importorskip("litert_torch")
    return pytest.importorskip("ai_edge_litert.interpreter")


def run_tflite(path, inputs: torch.Tensor) -> np.ndarray:
    """The .tflite in LiteRT's interpreter, window by window, independent of deepiot.litert."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    outputs = []
    for row in inputs:
        interpreter.set_tensor(source, row[None].numpy())
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target).copy())
    return np.concatenate(outputs)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: LeNet5(conv1_channels=4, conv2_channels=6, fc_features=16), (1, 28, 28)),
        (lambda: DeepSense(input_shape=(16, 6), conv_channels=8, gru_hidden=6), (16, 6)),
    ],
    ids=["lenet5", "deepsense-gru"],
)
def test_reference_models_export_to_litert_and_match_pytorch(tmp_path, litert, build, shape):
    torch.manual_seed(0)
    model = build().eval()
    result = export_model(
        model, torch.randn(1, *shape), tmp_path / "out", manifest_extra={}, formats=["onnx", "litert"]
    )
    assert result.paths["litert"] == tmp_path / "out" / "model.tflite"
    assert result.max_abs_diff["litert"] <= TOLERANCE["litert"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["litert"]
    assert entry["file"] == "model.tflite" and entry["batch_size"] == 1
    assert (
        entry["bytes"]
        == (tmp_path / "out" / "model.tflite").stat().st_size
        == manifest["files"]["model.tflite"]["bytes"]
    )
    inputs = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model(inputs).numpy()
    np.testing.assert_allclose(
        run_tflite(tmp_path / "out" / "model.tflite", inputs), expected, rtol=1e-4, atol=1e-4
    )


def test_missing_litert_is_an_export_error_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(
        ExportError, match=r"needs litert-torch and ai-edge-litert.*pip install 'deepiot\[litert\]'"
    ):
        export_model(
            torch.nn.Linear(3, 2),
            torch.randn(1, 3),
            tmp_path / "out",
            manifest_extra={},
            formats=["onnx", "litert"],
        )
    assert not (tmp_path / "out").exists()
