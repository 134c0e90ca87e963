"""int8 export: post-training static quantisation of an exported (sliced) ONNX model with ONNX Runtime.

`export_int8(export_dir, calibration, test)` writes `model.int8.onnx` next to `model.onnx`: weights and
activations uint8 (weights per output channel), in the QDQ format, with activation ranges calibrated (min/max)
on windows from the *training* split; it then compares int8 with fp32 on held-out windows (the test split):
accuracy, output error, file size and batch-1 latency, records them in the manifest under "int8", and refuses
(ExportError, no int8 file left behind) a model whose accuracy falls more than `max_drop_points` below fp32.

Why uint8 weights (U8U8) and not ONNX Runtime's default int8 weights (U8S8): on x86 CPUs with AVX2 but without
VNNI (e.g. AMD EPYC Rome/Milan, Intel before Cascade Lake), ONNX Runtime's u8s8 kernels multiply-add pairs
of uint8 × int8 into int16 with saturation (vpmaddubsw), so activations near 255 against weights near ±127
overflow: measured on a small LSTM classifier, the largest output error was 10.5% of the largest logit under
an emulated AVX2-only CPU against 0.4% with VNNI. U8U8 kernels widen to 16 bits first and compute the same
result on every x86 CPU (measured: identical outputs with and without VNNI; see
`experiments/device/int8/README.md` for the numbers and the emulated-CPU check). ONNX Runtime's static quantisation
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


def calibration_indices(size: int, count: int, seed: int) -> np.ndarray:
    """Sorted indices of the `count` (at most `size`) windows drawn for calibration with `seed`."""
    return np.sort(np.random.default_rng(seed).permutation(size)[: min(count, size)])


def sample_windows(dataset: TensorDataset, count: int, seed: int = 0) -> np.ndarray:
    """`count` random inputs of `dataset` (a split of a DatasetBundle) as float32 [count, ...]."""
    inputs = dataset.tensors[0]
    return inputs[calibration_indices(len(inputs), count, seed)].numpy().astype(np.float32)


# not QInt8: u8s8 kernels saturate on AVX2 CPUs without VNNI (module docstring)
WEIGHT_TYPE = QuantType.QUInt8
# the default bound: int8 is refused when its held-out accuracy is more than this many points below fp32's
MAX_DROP_POINTS = 1.0


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    per_channel: bool = True,
    recurrent_weights: bool = True,
    weight_type: QuantType = WEIGHT_TYPE,
) -> Path:
    """Static QDQ quantisation (uint8 weights and activations, min/max calibration) of `fp32_path`; with
    `recurrent_weights`, LSTM/GRU/RNN weights are stored int8 too (weight-only, dequantised at each run).
    `weight_type` QInt8 gives ONNX Runtime's default U8S8 (wrong on AVX2 CPUs without VNNI; for comparisons)."""
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
            weight_type=weight_type,
            calibrate_method=CalibrationMethod.MinMax,
        )
    if recurrent_weights:
        quantize_recurrent_weights(int8_path)
    return int8_path


def onnx_logits(path: Path, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs [N, classes] of an ONNX classifier (dynamic batch axis) on float32 inputs [N, ...], one thread."""
    session = make_session(path, threads=1)
    name = session.get_inputs()[0].name
    batches = [
        session.run(None, {name: inputs[start : start + batch_size]})[0]
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(batches)


def onnx_accuracy(path: Path, dataset: TensorDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of an ONNX classifier (dynamic batch axis) on a TensorDataset."""
    inputs, labels = dataset.tensors[0].numpy().astype(np.float32), dataset.tensors[1].numpy()
    return float((onnx_logits(path, inputs, batch_size).argmax(axis=1) == labels).mean())


def output_agreement(fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """How far int8 outputs [N, classes] are from fp32 ones: largest absolute error, that error relative to the
    largest |fp32| output, and the fraction of inputs whose top-1 class is the same."""
    error = float(np.abs(int8 - fp32).max())
    return {
        "max_abs_error": error,
        "relative_error": error / max(float(np.abs(fp32).max()), np.finfo(np.float32).tiny),
        "top1_agreement": float((int8.argmax(axis=1) == fp32.argmax(axis=1)).mean()),
    }


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
    fp32_path: Path, int8_path: Path, heldout: TensorDataset, threads: int = 1, labelled: bool = True
) -> dict[str, Any]:
    """int8 against fp32 on the held-out windows (accuracy when `labelled`, output error, top-1 agreement),
    file and weight bytes, batch-1 latency (median of 200 calls) of both."""
    timings = time_suite({"fp32": fp32_path, "int8": int8_path}, threads, warmup=20, repeats=200, rounds=10)
    inputs, labels = heldout.tensors[0].numpy().astype(np.float32), heldout.tensors[1].numpy()
    logits = {key: onnx_logits(path, inputs) for key, path in (("fp32", fp32_path), ("int8", int8_path))}
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
        if labelled:
            report[key]["test_accuracy"] = float((logits[key].argmax(axis=1) == labels).mean())
    report["size_ratio"] = report["fp32"]["bytes"] / report["int8"]["bytes"]
    report["weight_size_ratio"] = report["fp32"]["weight_bytes"] / report["int8"]["weight_bytes"]
    report["latency_ratio"] = report["int8"]["latency_ms"] / report["fp32"]["latency_ms"]
    report["output"] = {"windows": len(inputs), **output_agreement(logits["fp32"], logits["int8"])}
    if labelled:
        report["accuracy_drop_points"] = 100 * (
            report["fp32"]["test_accuracy"] - report["int8"]["test_accuracy"]
        )
    return report


def check_int8_bound(
    report: dict[str, Any],
    int8_path: Path,
    heldout: int,
    labelled: bool,
    max_drop_points: float,
    what: str,
    fp32_file: str,
) -> None:
    """Record the accuracy check in `report["check"]`; past the bound, delete `int8_path` and raise ExportError
    (`what`: the refused artefact's name, `fp32_file`: the fp32 file that stays). Shared by ONNX and ExecuTorch."""
    report["check"] = {
        "heldout": "test split" if labelled else "training windows not used for calibration",
        "max_drop_points": max_drop_points,
        "passed": not labelled or report["accuracy_drop_points"] <= max_drop_points,
    }
    if report["check"]["passed"]:
        return
    int8_path.unlink()
    error = report.get("output", {}).get("relative_error")
    raise ExportError(
        f"{what} refused: its accuracy on {heldout} held-out windows is {report['int8']['test_accuracy']:.2%} "
        f"against {report['fp32']['test_accuracy']:.2%} in fp32, {report['accuracy_drop_points']:.2f} points "
        f"lower, beyond the bound of {max_drop_points} points"
        + ("" if error is None else f" (largest output error {error:.1%} of the largest logit)")
        + f". The fp32 {fp32_file} is unaffected; ship it, calibrate on more windows (int8_windows=...), or accept "
        "a larger drop (int8_max_drop=...)."
    )


def heldout_windows(
    calibration: TensorDataset, test: TensorDataset | None, count: int, seed: int
) -> TensorDataset:
    """The windows int8 is judged on: the test split, or without one the training windows that were not drawn
    for calibration (`sample_windows` with the same count and seed)."""
    if test is not None:
        return test
    rest = np.setdiff1d(np.arange(len(calibration)), calibration_indices(len(calibration), count, seed))
    if len(rest) == 0:
        raise ExportError(
            f"int8 export needs held-out windows to check the int8 model against fp32, but all {len(calibration)} "
            "training windows were drawn for calibration; pass the test split or use fewer calibration windows."
        )
    return TensorDataset(*(tensor[rest] for tensor in calibration.tensors))


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
    max_drop_points: float = MAX_DROP_POINTS,
) -> Int8Result:
    """Quantise `<export_dir>/model.onnx` to `model.int8.onnx`, check it against fp32 and record it in the manifest.

    Args:
        export_dir: a deepiot export folder (model.onnx + manifest.json), e.g. from `export_compressed`.
        calibration: the training split (calibration windows are drawn from it, never from the test split).
        test: the held-out split int8 is judged on (accuracy and output error against fp32); None: the training
            windows not drawn for calibration, and output error only (no accuracy bound is checked).
        windows: number of calibration windows; seed: which ones.
        recurrent_weights: store LSTM/GRU/RNN weights int8 (weight-only): ~4× smaller file, a little slower
            (ONNX Runtime dequantises them at every run rather than folding them).
        max_drop_points: the bound: int8 is refused (ExportError; the file is removed, the manifest untouched)
            when its held-out accuracy is more than this many points below fp32's.
    """
    export_dir = Path(export_dir)
    fp32_path, manifest_path = export_dir / FILE_NAMES["onnx"], export_dir / MANIFEST_NAME
    if not fp32_path.is_file() or not manifest_path.is_file():
        raise ExportError(
            f"int8 export needs {fp32_path} and {manifest_path}; export the model to ONNX first."
        )
    if windows < 1 or len(calibration) == 0:
        raise ExportError(
            f"int8 calibration needs at least one window, got windows={windows} of {len(calibration)}."
        )
    heldout = heldout_windows(calibration, test, windows, seed)
    int8_path = quantize_int8(
        fp32_path,
        export_dir / INT8_NAME,
        sample_windows(calibration, windows, seed),
        per_channel,
        recurrent_weights,
    )
    report = compare_int8(fp32_path, int8_path, heldout, threads, labelled=test is not None)
    check_int8_bound(report, int8_path, len(heldout), test is not None, max_drop_points, "int8", "model.onnx")
    report["calibration"] = {
        "windows": min(windows, len(calibration)),
        "split": "train",
        "seed": seed,
        "method": "minmax",
        "format": "QDQ",
        "recurrent_weights": "int8 weight-only" if recurrent_weights else "fp32",
        "weights": "uint8 per-channel" if per_channel else "uint8 per-tensor",
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
