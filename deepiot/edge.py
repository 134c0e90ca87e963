"""ExecuTorch export (`model.pte`): torch.export → edge dialect lowered to XNNPACK → ExecuTorch program.

Operators XNNPACK does not take (recurrent layers unroll into per-step slices, stacks and means) stay on
ExecuTorch's portable/optimized CPU kernels. The program is exported for one window at a time (batch 1, the
on-device case), so its memory plan — the activation arena a device must provide besides the weights in the
file — is fixed at export time and recorded in the manifest with the delegates the program calls.

Needs the optional `[edge]` extra (`pip install 'deepiot[edge]'`; see pyproject.toml for the pins).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from deepiot.cost.latency import time_interleaved
from deepiot.device.profile import ProfileConfig, ProfileError, timings_document
from deepiot.export import ExportError

EXECUTORCH_BATCH_SIZE = 1  # the .pte takes one window per call; larger batches run window by window
EDGE_INSTALL_HINT = (
    "install the optional extra: pip install 'deepiot[edge]' (executorch 1.5.1, torchao 0.18, ruamel.yaml, "
    "tabulate; with --no-deps for executorch and torchao so that torch stays as it is)"
)
# Loggers that report, at import, optional CUDA kernels of torchao this CPU build cannot load, and a
# deprecation in torchao's pytree registration; neither matters for a CPU/XNNPACK export.
_IMPORT_CHATTER = ("torchao", "torch.utils._pytree")
_OPERATOR_PATTERN = re.compile(r"\baten(?:\.|::)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")


class EdgeError(ExportError):
    """ExecuTorch is missing, or a model cannot be lowered to it or run by its runtime."""


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def executorch_modules() -> SimpleNamespace:
    """The ExecuTorch entry points deepiot uses; EdgeError (with the install command) when missing."""
    try:
        with _quiet_loggers(_IMPORT_CHATTER):
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            from executorch.runtime import Runtime
    except ImportError as error:
        raise EdgeError(
            f"the executorch export format needs ExecuTorch, which cannot be imported ({error}); "
            f"{EDGE_INSTALL_HINT}"
        ) from error
    return SimpleNamespace(
        to_edge_transform_and_lower=to_edge_transform_and_lower,
        XnnpackPartitioner=XnnpackPartitioner,
        Runtime=Runtime,
    )


def executorch_available() -> bool:
    try:
        executorch_modules()
    except EdgeError:
        return False
    return True


def lower_to_executorch(model: nn.Module, sample_inputs: tuple[Tensor, ...]) -> Any:
    """torch.export → to_edge_transform_and_lower(XnnpackPartitioner) → to_executorch, at batch 1.

    Returns the ExecutorchProgramManager. Any failure becomes an EdgeError naming the stage and the
    operator(s) the error mentions, and the model's operators ExecuTorch's runtime has no kernel for.
    """
    et = executorch_modules()
    inputs = tuple(value[:EXECUTORCH_BATCH_SIZE].contiguous() for value in sample_inputs)
    stage = "torch.export.export"
    try:
        with torch.no_grad():
            exported = torch.export.export(model, inputs)
            stage = "to_edge_transform_and_lower (XNNPACK)"
            edge = et.to_edge_transform_and_lower(exported, partitioner=[et.XnnpackPartitioner()])
            stage = "to_executorch"
            program = edge.to_executorch()
    except Exception as error:
        raise EdgeError(_lowering_message(model, stage, error)) from error
    missing = sorted(set(program_operators(program)) - set(et.Runtime.get().operator_registry.operator_names))
    if missing:
        raise EdgeError(
            f"{type(model).__name__} lowers to ExecuTorch, but the ExecuTorch runtime has no kernel for "
            f"operator(s) {missing} (not delegated to XNNPACK either). Replace them in the model, or export "
            "without the executorch format."
        )
    return program


def _lowering_message(model: nn.Module, stage: str, error: Exception) -> str:
    text = str(error)
    operators = list(dict.fromkeys(match.replace("::", ".") for match in _OPERATOR_PATTERN.findall(text)))
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")[:300]
    named = f"operator(s) {operators}" if operators else "no operator named by the error"
    hint = ""
    if "data-dependent" in text:
        hint = (
            " The model branches in Python on tensor values, which torch.export cannot capture; use "
            "torch.where / torch.cond instead."
        )
    return (
        f"{type(model).__name__} cannot be exported to ExecuTorch: {stage} failed, {named} "
        f"({type(error).__name__}: {first_line}).{hint} The other export formats do not need this step; "
        "export without executorch in formats to skip it."
    )


def program_operators(program: Any) -> list[str]:
    """Non-delegated operators of the program's forward plan ('aten::mean.out', ...), in plan order."""
    plan = program.executorch_program.execution_plan[0]
    return [
        f"{operator.name}.{operator.overload}" if operator.overload else operator.name
        for operator in plan.operators
    ]


def describe_program(program: Any) -> dict[str, Any]:
    """Manifest entries of a lowered program: delegates, portable operators, planned memory."""
    plan = program.executorch_program.execution_plan[0]
    sizes = [int(size) for size in plan.non_const_buffer_sizes]  # entry 0 is reserved (always 0)
    return {
        "batch_size": EXECUTORCH_BATCH_SIZE,
        "delegates": dict(Counter(delegate.id for delegate in plan.delegates)),
        "portable_operators": sorted(set(program_operators(program))),
        "planned_memory_bytes": sum(sizes),
        "planned_buffers_bytes": sizes[1:],
        "planned_memory_note": (
            "activation arena of ExecuTorch's memory plan for one call (inputs, outputs and intermediates "
            "between delegate calls); weights are in the .pte and XNNPACK's own scratch is allocated when it "
            "loads, neither is counted"
        ),
    }


def save_executorch(model: nn.Module, sample_inputs: tuple[Tensor, ...], path: Path) -> dict[str, Any]:
    """Lower `model` (eval mode) and write the program to `path`; return its manifest entries."""
    started = time.perf_counter()
    program = lower_to_executorch(model, sample_inputs)
    path.write_bytes(program.buffer)
    return {
        "file": path.name,
        **describe_program(program),
        "bytes": path.stat().st_size,
        "export_seconds": round(time.perf_counter() - started, 2),
    }


_RUNTIME_THREADS: list[int] = []  # set once per process, before deepiot loads its first program


def _single_threaded_runtime() -> None:
    """One runtime thread, as every deepiot latency (ONNX Runtime, PyTorch) and the 2-core CI use.

    ExecuTorch's threadpool can only be resized while no loaded XNNPACK method uses it ("unsafe" reset), so this
    happens once, before deepiot's first program load; programs loaded earlier by the caller keep working only
    if they are not run afterwards.
    """
    if _RUNTIME_THREADS:
        return
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(1)
        _RUNTIME_THREADS.append(1)
    except (ImportError, AttributeError):  # an ExecuTorch without the call: its default pool
        _RUNTIME_THREADS.append(0)


def runtime_threads() -> int | None:
    """Threads of ExecuTorch's pool as set by deepiot (None: ExecuTorch's default, one per core)."""
    return _RUNTIME_THREADS[0] or None if _RUNTIME_THREADS else None


def load_method(path: Path) -> Any:
    """The `forward` method of a .pte loaded in ExecuTorch's Python runtime."""
    et = executorch_modules()
    _single_threaded_runtime()
    try:
        return et.Runtime.get().load_program(Path(path)).load_method("forward")
    except Exception as error:
        raise EdgeError(
            f"ExecuTorch's runtime cannot load {path} ({type(error).__name__}: {error}); its log above names "
            "the missing operator or backend"
        ) from error


def executorch_runner(path: Path) -> Callable[[tuple[Tensor, ...]], list[np.ndarray]]:
    """Run inputs of any batch size through the batch-1 program, window by window; outputs as numpy."""
    method = load_method(path)

    def run(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
        batch_size = inputs[0].shape[0]
        per_window = []
        for index in range(batch_size):
            window = [value[index : index + 1].contiguous() for value in inputs]
            try:
                outputs = method.execute(window)
            except Exception as error:  # a kernel failing at run time (ExecuTorch logs the operator)
                raise EdgeError(
                    f"ExecuTorch's runtime fails to run {Path(path).name} ({type(error).__name__}: {error}); "
                    "its log above names the failing operator"
                ) from error
            # copies: the outputs live in the method's planned arena, which the next call overwrites
            per_window.append([np.array(output, copy=True) for output in outputs])
        return [np.concatenate(outputs, axis=0) for outputs in zip(*per_window, strict=True)]

    return run


def executorch_call(path: Path, sample_inputs: tuple[Tensor, ...]) -> Callable[[], Any]:
    """One batch-1 call of the program on fixed inputs (for latency timing)."""
    method = load_method(path)
    window = [value[:EXECUTORCH_BATCH_SIZE].contiguous() for value in sample_inputs]
    return lambda: method.execute(window)


def executorch_latency(
    paths: dict[str, Path], sample_inputs: tuple[Tensor, ...], warmup: int = 10, repeats: int = 100
) -> dict[str, dict[str, Any]]:
    """Batch-1 wall-clock time of each program's forward in ExecuTorch's runtime (interleaved, one thread)."""
    from deepiot.cost.latency import time_interleaved

    calls = {name: executorch_call(path, sample_inputs) for name, path in paths.items()}
    stats = time_interleaved(calls, warmup=warmup, repeats=repeats, rounds=min(10, repeats))
    return {
        name: {
            "median_ms": value.median_ms,
            "p10_ms": value.p10_ms,
            "p90_ms": value.p90_ms,
            "repeats": value.repeats,
            "batch_size": EXECUTORCH_BATCH_SIZE,
            "threads": runtime_threads(),
        }
        for name, value in stats.items()
    }


class EdgeInt8Result(NamedTuple):
    """Where the int8 program went and how it compares with the fp32 one (accuracy, size, latency)."""

    path: Path
    report: dict[str, Any]


def quantize_pt2e(model: nn.Module, example: Tensor, windows: np.ndarray) -> nn.Module:
    """PT2E post-training quantisation for XNNPACK: int8 symmetric weights per output channel, int8
    activations, ranges observed on `windows` [N, ...] fed one at a time (the batch-1 graph)."""
    executorch_modules()
    try:
        with _quiet_loggers(_IMPORT_CHATTER):
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise EdgeError(
            f"int8 ExecuTorch export needs the XNNPACK quantizer ({error}); {EDGE_INSTALL_HINT}"
        ) from error
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    stage = "torch.export.export"
    try:
        with torch.no_grad():
            captured = torch.export.export(model, (example[:EXECUTORCH_BATCH_SIZE],)).module()
            stage = "prepare_pt2e (XNNPACKQuantizer)"
            prepared = prepare_pt2e(captured, quantizer)
            stage = "calibration"
            for window in windows:
                prepared(torch.from_numpy(window[None]))
            stage = "convert_pt2e"
            return convert_pt2e(prepared)
    except Exception as error:
        raise EdgeError(_lowering_message(model, f"int8 quantisation, {stage}", error)) from error


def export_int8_executorch(
    model: nn.Module,
    export_dir: str | Path,
    calibration: TensorDataset,
    test: TensorDataset | None = None,
    *,
    windows: int = 256,
    seed: int = 0,
    max_drop_points: float = 1.0,
    latency_repeats: int = 100,
) -> EdgeInt8Result:
    """Quantise `model` (the one exported to `<export_dir>/model.pte`) to `model.int8.pte` and record it.

    Calibration windows come from `calibration` (the training split); int8 is judged against the fp32
    program on `test` (accuracy, output error; without a test split the training windows not drawn for
    calibration, output error only), both run in ExecuTorch's runtime, and refused (ExportError, no file
    left) when its accuracy is more than `max_drop_points` below fp32's. The manifest gets "executorch_int8".
    """
    from deepiot.cost.latency import eval_mode
    from deepiot.export import EXECUTORCH_INT8_NAME, FILE_NAMES, MANIFEST_NAME, _quiet_exporters
    from deepiot.quantize import check_int8_bound, heldout_windows, sample_windows

    export_dir = Path(export_dir)
    fp32_path, manifest_path = export_dir / FILE_NAMES["executorch"], export_dir / MANIFEST_NAME
    if not fp32_path.is_file() or not manifest_path.is_file():
        raise ExportError(
            f"int8 ExecuTorch export needs {fp32_path} and {manifest_path}; export with formats=[...,executorch] "
            "first."
        )
    if windows < 1 or len(calibration) == 0:
        raise ExportError(
            f"int8 calibration needs at least one window, got windows={windows} of {len(calibration)}."
        )
    heldout = heldout_windows(calibration, test, windows, seed)
    calibration_windows = sample_windows(calibration, windows, seed)
    example = torch.from_numpy(calibration_windows[:1])
    with eval_mode(model), _quiet_exporters():
        quantized = quantize_pt2e(model, example, calibration_windows)
        program = lower_to_executorch(quantized, (example,))
    int8_path = export_dir / EXECUTORCH_INT8_NAME
    int8_path.write_bytes(program.buffer)
    try:
        report = _compare_programs(fp32_path, int8_path, heldout, example, test is not None, latency_repeats)
    except Exception:
        int8_path.unlink(missing_ok=True)
        raise
    report["int8"].update(
        {key: value for key, value in describe_program(program).items() if key != "batch_size"}
    )
    check_int8_bound(
        report,
        int8_path,
        len(heldout),
        test is not None,
        max_drop_points,
        "int8 ExecuTorch program",
        "model.pte",
    )
    report["calibration"] = {
        "windows": len(calibration_windows),
        "split": "train",
        "seed": seed,
        "method": "PT2E minmax observers (XNNPACKQuantizer, symmetric)",
        "weights": "int8 per-channel",
        "activations": "int8",
    }
    _record_in_manifest(manifest_path, int8_path, report)
    return EdgeInt8Result(int8_path, report)


def _compare_programs(
    fp32_path: Path, int8_path: Path, heldout: TensorDataset, example: Tensor, labelled: bool, repeats: int
) -> dict[str, Any]:
    from deepiot.quantize import output_agreement

    inputs, labels = heldout.tensors[0].float(), heldout.tensors[1].numpy()
    logits = {
        key: executorch_runner(path)((inputs,))[0] for key, path in (("fp32", fp32_path), ("int8", int8_path))
    }
    latency = executorch_latency({"fp32": fp32_path, "int8": int8_path}, (example,), repeats=repeats)
    report: dict[str, Any] = {}
    for key, path in (("fp32", fp32_path), ("int8", int8_path)):
        report[key] = {"bytes": path.stat().st_size, "latency": latency[key]}
        if labelled:
            report[key]["test_accuracy"] = float((logits[key].argmax(axis=1) == labels).mean())
    report["size_ratio"] = report["fp32"]["bytes"] / report["int8"]["bytes"]
    report["latency_ratio"] = latency["int8"]["median_ms"] / latency["fp32"]["median_ms"]
    report["output"] = {"windows": len(inputs), **output_agreement(logits["fp32"], logits["int8"])}
    if labelled:
        report["accuracy_drop_points"] = 100 * (
            report["fp32"]["test_accuracy"] - report["int8"]["test_accuracy"]
        )
    return report


def _record_in_manifest(manifest_path: Path, int8_path: Path, report: dict[str, Any]) -> None:
    manifest = json.loads(manifest_path.read_text())
    manifest["executorch_int8"] = report
    digest = hashlib.sha256(int8_path.read_bytes()).hexdigest()
    manifest.setdefault("files", {})[int8_path.name] = {"sha256": digest, "bytes": int8_path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def time_executorch_suite(entries: Sequence[Any], config: ProfileConfig) -> dict[str, Any]:
    """Lower every suite module to a batch-1 XNNPACK program (as `formats=[executorch]` exports models) and
    time it in ExecuTorch's runtime with one thread, interleaved like ORT. The .pte files live in a temporary
    folder (ExecuTorch loads programs from files) and are gone afterwards."""
    executorch_modules()  # EdgeError with the install command before any lowering
    with tempfile.TemporaryDirectory(prefix="deepiot_executorch_suite_") as folder:
        calls = {}
        for entry in entries:
            path = Path(folder) / f"{entry.id}.pte"
            save_executorch(entry.module.eval(), entry.inputs, path)
            calls[entry.id] = executorch_call(path, entry.inputs)
        if runtime_threads() != config.threads:
            raise ProfileError(
                f"ExecuTorch's threadpool could not be set to {config.threads} thread(s) (it runs "
                f"{runtime_threads() or 'one per core'}): this ExecuTorch lacks the threadpool reset deepiot uses."
            )
        stats = time_interleaved(calls, config.warmup, config.repeats, config.rounds)
    return timings_document(stats, config, "executorch", version("executorch"), backend="XNNPACK")
