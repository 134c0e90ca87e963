"""Export a (sliced) model to TorchScript, ONNX and ExecuTorch, check each against PyTorch, and describe it in a
manifest.

The output folder holds `model.ts`, `model.onnx`, optionally `model.pte` (ExecuTorch, deepiot.edge),
`manifest.json` (input shape/layout, normalisation,
classes, params, MACs, memory, accuracy, exporter, file hashes) and, for a compressed model, the
`slicing_plan.json` it was built from. Files are staged in a temporary folder and moved in with
`os.replace`, manifest last, so a crash or a failed check never leaves a half-written export behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

import deepiot
from deepiot.checkpoint import load_checkpoint, load_trained_model
from deepiot.cost.counter import ExampleInputs, as_batch_of_one, iter_tensors, measure_cost
from deepiot.cost.latency import eval_mode, onnx_feed, onnx_session
from deepiot.errors import DeepIoTError
from deepiot.structure import SlicingPlan, Structure, build_sliced_model
from deepiot.structure.plan import rebuild_original
from deepiot.utils import describe_differences

FORMATS = ("torchscript", "onnx", "executorch", "litert")
DEFAULT_FORMATS = (
    "torchscript",
    "onnx",
)  # executorch needs the optional [edge] extra, litert the [litert] one
FILE_NAMES = {
    "torchscript": "model.ts",
    "onnx": "model.onnx",
    "executorch": "model.pte",
    "litert": "model.tflite",
}
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "slicing_plan.json"
INT8_NAME = "model.int8.onnx"  # written by deepiot.quantize.export_int8 after an export
EXECUTORCH_INT8_NAME = "model.int8.pte"  # written by deepiot.edge.export_int8_executorch after an export
# Files an earlier export may have left in the folder; removed when this export does not rewrite them.
KNOWN_ARTIFACTS = (*FILE_NAMES.values(), PLAN_NAME, INT8_NAME, EXECUTORCH_INT8_NAME)
# An export passes its check when every output element is within TOLERANCE + RELATIVE_TOLERANCE * |PyTorch's|
# (numpy.allclose): float32 rounding grows with the size of the outputs (logits of random inputs reach tens),
# and a frozen TorchScript module folds batch norm into the convolutions (1.3e-5 seen on DeepSense).
TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-4, "executorch": 1e-4, "litert": 1e-4}
RELATIVE_TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-4, "executorch": 1e-4, "litert": 1e-4}
CHECK_BATCH_SIZES = (1, 3)
TRACE_BATCH_SIZE = 2  # >1 so the dynamo exporter keeps the batch axis symbolic (size 1 would be specialised)
OnnxExporter = Literal["auto", "dynamo", "torchscript"]
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportError(DeepIoTError, ValueError):
    """Bad export arguments, a plan that does not belong to the model, or an export that fails its check."""


class ExportResult(NamedTuple):
    """Where the export went and how far each exported format is from PyTorch (empty when unchecked)."""

    paths: dict[str, Path]  # "torchscript", "onnx", "manifest", and "slicing_plan" when there is one
    max_abs_diff: dict[str, float]


def export_model(
    model: nn.Module,
    example_inputs: ExampleInputs,
    out_dir: str | os.PathLike[str],
    *,
    manifest_extra: Mapping[str, Any],
    formats: Sequence[str] = DEFAULT_FORMATS,
    check: bool = True,
    onnx_exporter: OnnxExporter = "auto",
    freeze: bool = True,
    extra_files: Mapping[str, bytes] | None = None,
) -> ExportResult:
    """Export `model` to TorchScript (`model.ts`), ONNX (`model.onnx`, dynamic batch axis 0) and/or ExecuTorch
    (`model.pte`, batch 1, XNNPACK delegate; see deepiot.edge).

    Args:
        model: the module to export; run in eval mode (its training flag is restored afterwards).
        example_inputs: a tensor or tuple of tensors whose axis 0 is the batch; fixes the per-sample shapes.
        out_dir: destination folder (created if missing); earlier deepiot artifacts in it are replaced.
        manifest_extra: extra top-level manifest entries (normalisation, class names, metrics, ...).
        formats: any of "torchscript", "onnx", "executorch" (needs the `[edge]` extra) and "litert"
            (`model.tflite`, batch 1, checked in LiteRT's interpreter; needs the `[litert]` extra, see deepiot.litert).
        check: reload each file and compare it with PyTorch on random inputs of batch sizes 1 and 3
            (numpy.allclose: within 1e-4 + 1e-4·|output| for all; the batch-1 ExecuTorch program runs the
            batch of 3 window by window in ExecuTorch's runtime); a larger difference raises ExportError.
        onnx_exporter: "auto" uses the TorchScript-based exporter (`dynamo=False`) for models with recurrent
            layers — the dynamo exporter takes minutes to unroll even a tiny GRU/LSTM — and
            `torch.onnx.export(dynamo=True)` for the others; either falls back to the other exporter on
            failure. "dynamo" / "torchscript" force one. The ONNX Runtime check is the same for all.
        freeze: `torch.jit.freeze` the traced module (weights become constants; faster inference).
        extra_files: name → content of further files to publish and hash with the export.
    """
    formats = _check_arguments(formats, manifest_extra, extra_files or {}, onnx_exporter)
    if "executorch" in formats:
        from deepiot.edge import executorch_modules

        executorch_modules()  # missing ExecuTorch fails here, with the install command, before any work
    if "litert" in formats:
        from deepiot.litert import litert_modules

        litert_modules()  # likewise for LiteRT
    sample_inputs = _as_tensor_inputs(example_inputs)
    out_dir = Path(out_dir)
    _check_model_and_destination(model, sample_inputs, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out_dir)
    staging = Path(
        tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp")
    )
    try:
        with eval_mode(model), _quiet_exporters():
            manifest = _write_formats(model, sample_inputs, staging, formats, onnx_exporter, freeze)
            max_abs_diff = _check_formats(model, sample_inputs, staging, formats) if check else {}
            if check and "executorch" in formats:  # the runtime is known to work: time the program too
                from deepiot.edge import executorch_latency

                pte = staging / FILE_NAMES["executorch"]
                manifest["executorch"]["latency"] = executorch_latency({"fp32": pte}, sample_inputs)["fp32"]
            manifest["cost"] = measure_cost(model, sample_inputs)._asdict()
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
        manifest.update(_describe_check(max_abs_diff))
        manifest.update(manifest_extra)
        manifest["files"] = {path.name: _describe_file(path) for path in sorted(staging.iterdir())}
        _write_json(staging / MANIFEST_NAME, manifest)
        published = _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(paths=_result_paths(published), max_abs_diff=max_abs_diff)


SLICED_MODEL_KIND = "sliced_model"  # a fine-tuned sliced model: its own weights + the plan that shapes it


def export_compressed(
    checkpoint_path: str | os.PathLike[str],
    plan_path: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    check: bool = True,
    onnx_exporter: OnnxExporter = "auto",
) -> ExportResult:
    """Export a trained checkpoint, physically sliced by a slicing plan (or unchanged when `plan_path` is None).

    Args:
        checkpoint_path: a deepiot "trained_model" checkpoint (the weights the plan's kept indices refer to).
        plan_path: a `slicing_plan.json` for this checkpoint's model, or None.
        out_dir: destination; default `<checkpoint folder>/export`.

    Raises:
        CheckpointError: the checkpoint is missing, truncated or not a deepiot trained model.
        ExportError: the plan was made for another model (different model_config).
        StructureError: the plan's groups or indices do not fit the model's structure.
    """
    model, checkpoint, example, extra_files = load_export_model(checkpoint_path, plan_path)
    out_dir = Path(checkpoint_path).parent / "export" if out_dir is None else Path(out_dir)
    manifest_extra = manifest_entries(
        checkpoint["model_config"],
        checkpoint.get("metrics") or {},
        checkpoint.get("data"),
        sliced=PLAN_NAME in extra_files,
        source=str(checkpoint_path),
    )
    return export_model(
        model,
        example,
        out_dir,
        manifest_extra=manifest_extra,
        formats=formats,
        check=check,
        onnx_exporter=onnx_exporter,
        extra_files=extra_files,
    )


def load_export_model(
    checkpoint_path: str | os.PathLike[str], plan_path: str | os.PathLike[str] | None
) -> tuple[nn.Module, dict[str, Any], Tensor, dict[str, bytes]]:
    """The model `export_compressed` exports: (model, checkpoint, example input, extra files (the plan))."""
    extra_files: dict[str, bytes] = {}
    if load_checkpoint(checkpoint_path).get("kind") == SLICED_MODEL_KIND:
        model, checkpoint = load_sliced_model(checkpoint_path)
        plan = SlicingPlan.from_dict(checkpoint["slicing_plan"])
        if plan_path is not None:
            # the given plan's own defects first, named against the full-size structure it describes
            config = checkpoint["model_config"]
            given = _checked_plan(Path(plan_path), config, rebuild_original(config), example_input(config))
            _check_same_plan(plan, given, Path(plan_path), Path(checkpoint_path))
        extra_files[PLAN_NAME] = json.dumps(plan.to_dict(), indent=2).encode()
        example = example_input(checkpoint["model_config"])
    else:
        model, checkpoint = load_trained_model(checkpoint_path)
        example = example_input(checkpoint["model_config"])
        if plan_path is not None:
            model = _sliced_model(model, checkpoint["model_config"], Path(plan_path), example)
            extra_files[PLAN_NAME] = Path(plan_path).read_bytes()
    return model, checkpoint, example, extra_files


def example_input(model_config: Mapping[str, Any]) -> Tensor:
    """A fixed random input batch of one for the model `model_config` describes."""
    return torch.randn(1, *model_config["input_shape"], generator=torch.Generator().manual_seed(0))


def load_sliced_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned sliced model from its "sliced_model" checkpoint (model_config + slicing plan +
    the sliced model's own weights); returns (model in eval mode, checkpoint)."""
    checkpoint = load_checkpoint(path, kind=SLICED_MODEL_KIND)
    plan = SlicingPlan.from_dict(checkpoint["slicing_plan"])
    model = build_sliced_model(plan, checkpoint["state_dict"], example_input(checkpoint["model_config"]))
    return model.eval(), checkpoint


def _check_same_plan(
    embedded: SlicingPlan, given: SlicingPlan, plan_path: Path, checkpoint_path: Path
) -> None:
    """A plan passed with a sliced checkpoint must be the plan the checkpoint was sliced with."""
    if (
        _plain(given.kept) != _plain(embedded.kept)
        or _plain(given.group_sizes) != _plain(embedded.group_sizes)
        or _plain(given.model_config) != _plain(embedded.model_config)
    ):
        raise ExportError(
            f"slicing plan {plan_path} is not the plan {checkpoint_path} was sliced with (the checkpoint holds "
            "its own plan); pass the slicing_plan.json of the same compression run, or no plan at all."
        )


def _sliced_model(
    model: nn.Module, model_config: Mapping[str, Any], plan_path: Path, example: Tensor
) -> nn.Module:
    """Load the plan, make sure it belongs to this model, and build the physically smaller model."""
    plan = _checked_plan(plan_path, model_config, model, example)
    return build_sliced_model(plan, model.state_dict(), example)


def _checked_plan(
    plan_path: Path, model_config: Mapping[str, Any], model: nn.Module, example: Tensor
) -> SlicingPlan:
    """The plan at `plan_path`, checked to be for `model_config` and to fit the full-size `model`'s groups
    (sizes, index ranges, duplicates, empty groups): ExportError or StructureError names the defect."""
    plan = SlicingPlan.load(plan_path)
    plan_config, expected_config = _plain(plan.model_config), _plain(model_config)
    if plan_config != expected_config:
        raise ExportError(
            f"slicing plan {plan_path} is a plan for another model: its model_config differs from the "
            f"checkpoint's ({describe_differences(expected_config, plan_config)}). Pass the slicing plan written "
            "by the compression run of this checkpoint."
        )
    plan.validate(Structure.from_model(model, example))
    return plan


def _plain(config: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare equal across file formats."""
    return json.loads(json.dumps(config))


def manifest_entries(
    model_config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    *,
    sliced: bool,
    source: str | None = None,
) -> dict[str, Any]:
    """What a manifest says about a model besides its files and cost: how to rebuild it (`model_config`), how to
    feed it (input layout, normalisation, class names and dataset from `data`, a dataset description as in a
    trained checkpoint's "data" entry; None when unknown, the layout also without an input_shape), its
    `metrics`, its slicing plan's file name (None when not sliced) and where it came from (`source`: a
    checkpoint path or the env's id).

    The one builder of these entries, used by deepiot-compress/-baseline (through `deepiot.compress`),
    deepiot-export and the env."""
    data = data or {}
    channel_axis = data.get("channel_axis")
    input_shape = model_config.get("input_shape")
    return {
        "model_config": _plain(model_config),
        "input_layout": None if input_shape is None else input_layout(input_shape, channel_axis),
        "normalization": {**data["normalization"], "channel_axis": channel_axis}
        if "normalization" in data
        else None,
        "class_names": _plain(data.get("class_names")),
        "dataset": data.get("name"),
        "metrics": _plain(metrics),
        "slicing_plan": PLAN_NAME if sliced else None,
        "source": source,
    }


def input_layout(input_shape: Sequence[int], channel_axis: int | None) -> str:
    """Axis letters of a batched input: images [C, H, W] → "NCHW", sensor windows [T, C] → "NTC"."""
    known = {(3, 0): "NCHW", (2, 1): "NTC", (1, 0): "NF"}
    rank = len(input_shape)
    axis = None if channel_axis is None else channel_axis % rank
    if (rank, axis) in known:
        return known[(rank, axis)]
    return f"N + {rank} sample axes, channels at sample axis {axis}"


def _check_arguments(
    formats: Sequence[str],
    manifest_extra: Mapping[str, Any],
    extra_files: Mapping[str, bytes],
    onnx_exporter: str,
) -> tuple[str, ...]:
    """Validate formats, exporter and file/manifest names before any work starts."""
    if isinstance(formats, str):
        raise ExportError(f"export formats must be a list such as ['onnx'], got the string {formats!r}")
    if not isinstance(manifest_extra, Mapping):
        raise ExportError(
            f"manifest_extra must be a dict of extra manifest entries ({{}} for none), got "
            f"{type(manifest_extra).__name__}"
        )
    try:
        json.dumps(dict(manifest_extra))
    except (TypeError, ValueError) as error:
        raise ExportError(
            f"manifest_extra must be JSON-serialisable (plain dicts/lists/numbers): {error}"
        ) from error
    not_bytes = sorted(name for name, content in extra_files.items() if not isinstance(content, bytes))
    if not_bytes:
        raise ExportError(f"extra export files must map names to bytes; {not_bytes} are not bytes")
    if onnx_exporter not in ONNX_EXPORTERS:
        raise ExportError(f"onnx_exporter must be one of {list(ONNX_EXPORTERS)}, got {onnx_exporter!r}")
    formats = tuple(dict.fromkeys(formats))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ExportError(
            f"export formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}"
        )
    reserved = {*FILE_NAMES.values(), MANIFEST_NAME}
    clashing_files = reserved.intersection(extra_files) | {
        name for name in extra_files if Path(name).name != name
    }
    if clashing_files:
        raise ExportError(
            f"extra export files must be plain names other than {sorted(reserved)}: {clashing_files}"
        )
    clashing_keys = set(manifest_extra).intersection(_COMPUTED_MANIFEST_KEYS)
    if clashing_keys:
        raise ExportError(
            f"manifest_extra must not override computed manifest entries {sorted(clashing_keys)}"
        )
    return formats


def _check_model_and_destination(model: Any, sample_inputs: tuple[Tensor, ...], out_dir: Path) -> None:
    """The model must be a module that runs on the example inputs; `out_dir` must not be a file."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"export_model needs an nn.Module to export, got {type(model).__name__}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export destination {out_dir} exists and is not a folder")
    try:
        with eval_mode(model):
            _pytorch_outputs(model, sample_inputs)
    except Exception as error:  # the model's own error (shape mismatch, ...)
        shapes = [tuple(value.shape) for value in sample_inputs]
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ExportError(
            f"{type(model).__name__} fails on example inputs of shape {shapes} ({type(error).__name__}: "
            f"{first_line}); pass example inputs of the shape the model takes, batch axis first."
        ) from error


_COMPUTED_MANIFEST_KEYS = (
    "format",
    "deepiot_version",
    "torch_version",
    "created",
    "input",
    "output",
    "torchscript",
    "onnx",
    "executorch",
    "executorch_int8",
    "litert",
    "cost",
    "check",
    "files",
)


def _as_tensor_inputs(example_inputs: ExampleInputs) -> tuple[Tensor, ...]:
    """One sample of every input (batch axis 0 kept, size 1); only tensor inputs can be exported."""
    inputs = as_batch_of_one(example_inputs)
    if not inputs or not all(isinstance(value, Tensor) and value.dim() >= 1 for value in inputs):
        raise ExportError(
            "export needs example inputs that are tensors with a leading batch axis, e.g. "
            f"torch.randn(1, *input_shape); got {[type(value).__name__ for value in inputs]}"
        )
    return inputs


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' deprecation chatter and progress printing (errors still propagate)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Both are harmless here: every export is checked on batch sizes 1 and 3 afterwards.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", message="The tensor attributes .*_flat_weights")
        yield


def _input_names(count: int) -> list[str]:
    return ["input"] if count == 1 else [f"input_{index}" for index in range(count)]


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{index}" for index in range(count)]


def _batch_of(
    sample_inputs: tuple[Tensor, ...], batch_size: int, generator: torch.Generator
) -> tuple[Tensor, ...]:
    """Random inputs of `batch_size` with the example's per-sample shapes and dtypes."""
    batches = []
    for sample in sample_inputs:
        shape = (batch_size, *sample.shape[1:])  # [B, *per-sample shape]
        if sample.is_floating_point():
            batches.append(torch.randn(shape, generator=generator, dtype=sample.dtype))
        else:
            batches.append(sample.expand(shape).clone())  # [1, ...] broadcast to [B, ...]
    return tuple(batches)


def _pytorch_outputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    with torch.no_grad():
        return list(iter_tensors(model(*inputs)))


def _write_formats(
    model: nn.Module,
    sample_inputs: tuple[Tensor, ...],
    staging: Path,
    formats: tuple[str, ...],
    onnx_exporter: OnnxExporter,
    freeze: bool,
) -> dict[str, Any]:
    """Write the requested files into `staging`; return the manifest entries that describe them."""
    trace_inputs = _batch_of(sample_inputs, TRACE_BATCH_SIZE, torch.Generator().manual_seed(0))
    outputs = _pytorch_outputs(model, sample_inputs)
    manifest: dict[str, Any] = {
        "format": "deepiot-export",
        "deepiot_version": deepiot.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": _describe_tensors(_input_names(len(sample_inputs)), sample_inputs),
        "output": _describe_tensors(_output_names(len(outputs)), outputs),
    }
    if "torchscript" in formats:
        _save_torchscript(model, trace_inputs, staging / FILE_NAMES["torchscript"], freeze)
        manifest["torchscript"] = {"file": FILE_NAMES["torchscript"], "frozen": freeze}
    if "onnx" in formats:
        path = staging / FILE_NAMES["onnx"]
        manifest["onnx"] = {
            "file": path.name,
            **_save_onnx(model, trace_inputs, len(outputs), path, onnx_exporter),
        }
    if "executorch" in formats:
        from deepiot.edge import save_executorch

        manifest["executorch"] = save_executorch(model, sample_inputs, staging / FILE_NAMES["executorch"])
    if "litert" in formats:
        from deepiot.litert import save_litert

        manifest["litert"] = save_litert(model, sample_inputs, staging / FILE_NAMES["litert"])
    return manifest


def _describe_tensors(names: list[str], tensors: Sequence[Tensor]) -> list[dict[str, Any]]:
    """Name, per-sample shape with a symbolic batch axis, and dtype of each model input or output."""
    return [
        {
            "name": name,
            "shape": ["batch", *tensor.shape[1:]],
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
        for name, tensor in zip(names, tensors, strict=True)
    ]


def _save_torchscript(model: nn.Module, trace_inputs: tuple[Tensor, ...], path: Path, freeze: bool) -> None:
    with torch.no_grad():
        scripted = torch.jit.trace(model, trace_inputs)
        if freeze:
            scripted = torch.jit.freeze(scripted)
    scripted.save(str(path))


def _save_onnx(
    model: nn.Module, trace_inputs: tuple[Tensor, ...], output_count: int, path: Path, exporter: OnnxExporter
) -> dict[str, Any]:
    """ONNX with a dynamic batch axis; "auto" picks one exporter (`auto_onnx_exporters`), the other on failure."""
    writers = {
        "dynamo": lambda: _export_onnx_dynamo(model, trace_inputs, path),
        "torchscript": lambda: _export_onnx_torchscript(model, trace_inputs, output_count, path),
    }
    order = auto_onnx_exporters(model) if exporter == "auto" else (exporter,)
    record: dict[str, Any] = {}
    for index, name in enumerate(order):
        try:
            writers[name]()
        except Exception as err:
            if index == len(order) - 1:
                raise
            record[f"{name}_failure"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            continue
        record["exporter"] = name
        break
    if exporter == "auto":
        record["exporter_choice"] = f"auto: {' then '.join(order)}" + (
            " (recurrent layers: the dynamo exporter is slow on them)" if order[0] == "torchscript" else ""
        )
    record["opset"] = _onnx_opset(path)
    return record


def auto_onnx_exporters(model: nn.Module) -> tuple[str, str]:
    """The "auto" exporter order: TorchScript-based first for models with recurrent layers, else dynamo.

    Exporting a GRU/LSTM with `dynamo=True` takes 40–100 s even for a tiny model (it traces the recurrence
    step by step), against well under a second with `dynamo=False`; both pass the ONNX Runtime check
    (`scripts/benchmarks/bench_onnx_export.py` measures the ratio).
    """
    recurrent = any(isinstance(module, nn.RNNBase | nn.RNNCellBase) for module in model.modules())
    return ("torchscript", "dynamo") if recurrent else ("dynamo", "torchscript")


# The dynamo exporter warns "torchvision is not installed. Skipping torchvision::..." once per torchvision
# operator it could translate; deepiot's models use none, so a user cannot act on it.
TORCHVISION_NOTICE_LOGGER = "torch.onnx._internal.exporter._registration"


def _export_onnx_dynamo(model: nn.Module, trace_inputs: tuple[Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch")
    logging.getLogger(TORCHVISION_NOTICE_LOGGER).setLevel(logging.ERROR)
    torch.onnx.export(
        model,
        trace_inputs,
        str(path),
        dynamo=True,
        input_names=_input_names(len(trace_inputs)),
        dynamic_shapes=tuple({0: batch} for _ in trace_inputs),
        external_data=False,
        verbose=False,
    )


def _export_onnx_torchscript(
    model: nn.Module, trace_inputs: tuple[Tensor, ...], output_count: int, path: Path
) -> None:
    input_names, output_names = _input_names(len(trace_inputs)), _output_names(output_count)
    torch.onnx.export(
        model,
        trace_inputs,
        str(path),
        dynamo=False,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
    )


def _onnx_opset(path: Path) -> int:
    import onnx

    opsets = onnx.load(str(path), load_external_data=False).opset_import
    return next(entry.version for entry in opsets if entry.domain in ("", "ai.onnx"))


def _check_formats(
    model: nn.Module, sample_inputs: tuple[Tensor, ...], staging: Path, formats: tuple[str, ...]
) -> dict[str, float]:
    """Largest |exported − PyTorch| per format over random batches of sizes 1 and 3; raise if not all close."""
    runners = {name: _RUNNER_LOADERS[name](staging / FILE_NAMES[name]) for name in formats}
    generator = torch.Generator().manual_seed(1)
    max_abs_diff = dict.fromkeys(formats, 0.0)
    failed: set[str] = set()
    for batch_size in CHECK_BATCH_SIZES:
        inputs = _batch_of(sample_inputs, batch_size, generator)
        expected = _pytorch_outputs(model, inputs)
        for name, run in runners.items():
            actual = run(inputs)
            max_abs_diff[name] = max(max_abs_diff[name], _max_abs_diff(expected, actual))
            if not _all_close(expected, actual, TOLERANCE[name], RELATIVE_TOLERANCE[name]):
                failed.add(name)
    if failed:
        raise ExportError(
            f"exported model differs from PyTorch beyond tolerance (absolute {TOLERANCE}, relative "
            f"{RELATIVE_TOLERANCE}) in {sorted(failed)}: max |difference| {max_abs_diff} on random inputs of "
            f"batch sizes {CHECK_BATCH_SIZES}. The export is not written."
        )
    return max_abs_diff


def _torchscript_runner(path: Path):
    loaded = torch.jit.load(str(path))

    def run(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            return [tensor.numpy() for tensor in iter_tensors(loaded(*inputs))]

    return run


def _onnx_runner(path: Path):
    session = onnx_session(path)
    return lambda inputs: session.run(None, onnx_feed(session, inputs))


def _executorch_runner(path: Path):
    from deepiot.edge import executorch_runner

    return executorch_runner(path)


def _litert_runner(path: Path):
    from deepiot.litert import litert_runner

    return litert_runner(path)


_RUNNER_LOADERS = {
    "torchscript": _torchscript_runner,
    "onnx": _onnx_runner,
    "executorch": _executorch_runner,
    "litert": _litert_runner,
}


def _max_abs_diff(expected: list[Tensor], actual: list[np.ndarray]) -> float:
    if len(expected) != len(actual):
        return float("inf")
    diffs = [
        np.abs(np.asarray(got) - want.numpy()).max(initial=0.0) if np.shape(got) == want.shape else np.inf
        for want, got in zip(expected, actual, strict=True)
    ]
    return float(max(diffs, default=0.0))


def _all_close(expected: list[Tensor], actual: list[np.ndarray], atol: float, rtol: float) -> bool:
    return len(expected) == len(actual) and all(
        np.shape(got) == want.shape and np.allclose(got, want.numpy(), rtol=rtol, atol=atol)
        for want, got in zip(expected, actual, strict=True)
    )


def _describe_check(max_abs_diff: dict[str, float]) -> dict[str, Any]:
    if not max_abs_diff:
        return {"check": None}
    tolerance = {name: {"abs": TOLERANCE[name], "rel": RELATIVE_TOLERANCE[name]} for name in max_abs_diff}
    return {
        "check": {
            "max_abs_diff": max_abs_diff,
            "tolerance": tolerance,
            "batch_sizes": list(CHECK_BATCH_SIZES),
        }
    }


def _describe_file(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Delete staging folders of earlier exports to `out_dir` whose process is gone (killed mid-export)."""
    prefix = f".{out_dir.name}."
    for path in out_dir.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = path.name[len(prefix) :].split(".")[0]
        if path.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there; keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _publish(staging: Path, out_dir: Path) -> list[Path]:
    """Move the staged files into `out_dir` (os.replace each), the manifest last; drop stale artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest while the folder is being updated
    staged = sorted(path for path in staging.iterdir() if path.name != MANIFEST_NAME)
    for stale in set(KNOWN_ARTIFACTS) - {path.name for path in staged}:
        (out_dir / stale).unlink(missing_ok=True)
    published = []
    for path in [*staged, staging / MANIFEST_NAME]:
        os.replace(path, out_dir / path.name)
        published.append(out_dir / path.name)
    return published


def _result_paths(published: list[Path]) -> dict[str, Path]:
    by_name = {path.name: path for path in published}
    keys = {
        **{file: key for key, file in FILE_NAMES.items()},
        MANIFEST_NAME: "manifest",
        PLAN_NAME: "slicing_plan",
    }
    return {keys.get(name, name): path for name, path in by_name.items()}
