"""int8 export: post-training static quantisation of an exported (sliced) ONNX model with ONNX Runtime.

`export_int8(export_dir, calibration, test)` writes `model.int8.onnx` next to `model.onnx`: weights int8
per output channel, activations uint8, in the QDQ format, with activation ranges calibrated (min/max) on
windows from the *training* split; it then measures accuracy on the test split, file size and batch-1
latency of both files and records them in the manifest under "int8". ONNX Runtime's static quantisation
covers Conv/MatMul/Gemm but not LSTM/GRU/RNN, so their weights W and R are stored int8 weight-only
(symmetric, per gate row) behind a DequantizeLinear: the file shrinks ~4×, the recurrence still computes
in float.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch.utils.data import TensorDataset

from deepiot.device.ort_profile import make_session, time_suite
from deepiot.export import FILE_NAMES, INT8_NAME, MANIFEST_NAME, ExportError


class Int8Result(NamedTuple):
    """Where the int8 model went and how it compares with the fp32 one (accuracy, size, latency)."""

    path: Path
    report: dict[str, Any]


class WindowReader(CalibrationDataReader):
    """Feeds calibration windows [N, ...] to ONNX Runtime's calibrator, `batch_size` at a time."""

    def __init__(self, input_name: str, windows: np.ndarray, batch_size: int = 32) -> None:
        self.input_name, self.windows, self.batch_size = input_name, windows, batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.windows):
            return None
        batch = self.windows[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.start = 0


def sample_windows(dataset: TensorDataset, count: int, seed: int = 0) -> np.ndarray:
    """`count` random inputs of `dataset` (a split of a DatasetBundle) as float32 [count, ...]."""
    inputs = dataset.tensors[0]
    order = np.random.default_rng(seed).permutation(len(inputs))[: min(count, len(inputs))]
    return inputs[np.sort(order)].numpy().astype(np.float32)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    per_channel: bool = True,
    recurrent_weights: bool = True,
) -> Path:
    """Static QDQ quantisation (int8 weights, uint8 activations, min/max calibration) of `fp32_path`; with
    `recurrent_weights`, LSTM/GRU/RNN weights are stored int8 too (weight-only, dequantised at each run)."""
    input_name = (
        onnxruntime.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    )
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:  # shape inference + graph optimisation first, as ONNX Runtime recommends
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantise the plain file instead
            prepared = fp32_path
        quantize_static(
            str(prepared),
            str(int8_path),
            WindowReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    if recurrent_weights:
        quantize_recurrent_weights(int8_path)
    return int8_path


def onnx_accuracy(path: Path, dataset: TensorDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of an ONNX classifier (dynamic batch axis) on a TensorDataset."""
    session = make_session(path, threads=1)
    name = session.get_inputs()[0].name
    inputs, labels = dataset.tensors[0].numpy().astype(np.float32), dataset.tensors[1].numpy()
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = session.run(None, {name: inputs[start : start + batch_size]})[0]
        correct += int((logits.argmax(axis=1) == labels[start : start + batch_size]).sum())
    return correct / len(inputs)


RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def quantize_recurrent_weights(path: Path) -> int:
    """Store the W and R inputs of every LSTM/GRU/RNN node of `path` as int8 + DequantizeLinear, in place.

    Symmetric per-row quantisation along axis 1 (one scale per gate row of W [D, G·H, in] and R [D, G·H, H]);
    returns the number of weight tensors converted.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    converted, dequantizers = 0, []
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        for name in node.input[1:3]:  # W, R
            if name not in initializers or initializers[name].data_type != onnx.TensorProto.FLOAT:
                continue
            weight = numpy_helper.to_array(initializers[name])  # [D, G·H, in or H]
            if weight.shape[0] != 1:  # per-axis DequantizeLinear needs one axis: fold directions per tensor
                scale = np.array(np.abs(weight).max() / 127 or 1.0, dtype=np.float32)
                quantized = np.round(weight / scale).astype(np.int8)
                axis_attributes = {}
            else:
                scale = (np.abs(weight).max(axis=(0, 2)) / 127).astype(np.float32)  # [G·H]
                scale[scale == 0] = 1.0
                quantized = np.round(weight / scale[None, :, None]).astype(np.int8)
                axis_attributes = {"axis": 1}
            initializers[name].CopyFrom(numpy_helper.from_array(quantized, f"{name}_int8"))
            zero = np.zeros(scale.shape, dtype=np.int8)
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(scale, f"{name}_scale"),
                    numpy_helper.from_array(zero, f"{name}_zero_point"),
                ]
            )
            dequantizers.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                    [name],
                    name=f"{name}_dequantize",
                    **axis_attributes,
                )
            )
            converted += 1
    if converted:
        nodes = [*dequantizers, *model.graph.node]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return converted


def initializer_bytes(path: Path) -> int:
    """Bytes of the stored tensors (weights, scales, zero points) of an ONNX file, without the graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(tensor).nbytes for tensor in model.graph.initializer)


def compare_int8(
    fp32_path: Path, int8_path: Path, test: TensorDataset | None, threads: int = 1
) -> dict[str, Any]:
    """Accuracy (when `test` is given), file and weight bytes, batch-1 latency (median of 200 calls) of both."""
    timings = time_suite({"fp32": fp32_path, "int8": int8_path}, threads, warmup=20, repeats=200, rounds=10)
    report: dict[str, Any] = {}
    for key, path in (("fp32", fp32_path), ("int8", int8_path)):
        stats = timings[key]
        report[key] = {
            "bytes": path.stat().st_size,
            "weight_bytes": initializer_bytes(path),
            "latency_ms": stats["median_ms"],
            "latency_p10_ms": stats["p10_ms"],
            "latency_p90_ms": stats["p90_ms"],
        }
        if test is not None:
            report[key]["test_accuracy"] = onnx_accuracy(path, test)
    report["size_ratio"] = report["fp32"]["bytes"] / report["int8"]["bytes"]
    report["weight_size_ratio"] = report["fp32"]["weight_bytes"] / report["int8"]["weight_bytes"]
    report["latency_ratio"] = report["int8"]["latency_ms"] / report["fp32"]["latency_ms"]
    if test is not None:
        report["accuracy_drop_points"] = 100 * (
            report["fp32"]["test_accuracy"] - report["int8"]["test_accuracy"]
        )
    return report


def export_int8(
    export_dir: str | Path,
    calibration: TensorDataset,
    test: TensorDataset | None = None,
    *,
    windows: int = 256,
    seed: int = 0,
    per_channel: bool = True,
    recurrent_weights: bool = True,
    threads: int = 1,
) -> Int8Result:
    """Quantise `<export_dir>/model.onnx` to `model.int8.onnx` and record the comparison in the manifest.

    Args:
        export_dir: a deepiot export folder (model.onnx + manifest.json), e.g. from `export_compressed`.
        calibration: the training split (calibration windows are drawn from it, never from the test split).
        test: the test split, for the accuracy of both models (None: size and latency only).
        windows: number of calibration windows; seed: which ones.
        recurrent_weights: store LSTM/GRU/RNN weights int8 (weight-only): ~4× smaller file, a little slower
            (ONNX Runtime dequantises them at every run rather than folding them).
    """
    export_dir = Path(export_dir)
    fp32_path, manifest_path = export_dir / FILE_NAMES["onnx"], export_dir / MANIFEST_NAME
    if not fp32_path.is_file() or not manifest_path.is_file():
        raise ExportError(
            f"int8 export needs {fp32_path} and {manifest_path}; export the model to ONNX first."
        )
    int8_path = quantize_int8(
        fp32_path,
        export_dir / INT8_NAME,
        sample_windows(calibration, windows, seed),
        per_channel,
        recurrent_weights,
    )
    report = compare_int8(fp32_path, int8_path, test, threads)
    report["calibration"] = {
        "windows": min(windows, len(calibration)),
        "split": "train",
        "seed": seed,
        "method": "minmax",
        "format": "QDQ",
        "recurrent_weights": "int8 weight-only" if recurrent_weights else "fp32",
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "activations": "uint8",
        "onnxruntime": onnxruntime.__version__,
    }
    _record_in_manifest(manifest_path, int8_path, report)
    return Int8Result(int8_path, report)


def _record_in_manifest(manifest_path: Path, int8_path: Path, report: Mapping[str, Any]) -> None:
    manifest = json.loads(manifest_path.read_text())
    manifest["int8"] = dict(report)
    digest = hashlib.sha256(int8_path.read_bytes()).hexdigest()
    manifest.setdefault("files", {})[int8_path.name] = {"sha256": digest, "bytes": int8_path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def checkpoint_datasets(checkpoint_path: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """(train split, test split) of the dataset a deepiot checkpoint was trained on (its `config.data`)."""
    from hydra.utils import instantiate

    from deepiot.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)  # a trained model or a fine-tuned sliced model
    dataset_config = (checkpoint.get("config") or {}).get("data", {}).get("dataset")
    if not dataset_config:
        raise ExportError(
            f"int8 export calibrates on the training split, but {checkpoint_path} does not record its dataset "
            "(config.data.dataset); call deepiot.quantize.export_int8(export_dir, train_split, test_split)."
        )
    from hydra.errors import InstantiationException

    try:
        bundle = instantiate(dataset_config)
    except InstantiationException as err:  # the loader's own error (DataError: a missing or corrupt file)
        cause = err.__cause__ or err
        raise ExportError(
            f"int8 export calibrates on the training split of the dataset {checkpoint_path} was trained on "
            f"(config.data.dataset, _target_ {dataset_config.get('_target_')}), but it cannot be loaded: {cause} "
            "Expected that dataset where it was at training time; or call "
            "deepiot.quantize.export_int8(export_dir, train_split, test_split) with the splits yourself."
        ) from None
    return bundle.train, bundle.test
