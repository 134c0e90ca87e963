"""ExecuTorch export (`model.pte`): torch.export → edge dialect lowered to XNNPACK → ExecuTorch program.

Operators XNNPACK does not take (recurrent layers unroll into per-step slices, stacks and means) stay on
ExecuTorch's portable/optimized CPU kernels. The program is exported for one window at a time (batch 1, the
on-device case), so its memory plan — the activation arena a device must provide besides the weights in the
file — is fixed at export time and recorded in the manifest with the delegates the program calls.

Needs the optional `[edge]` extra (`pip install 'deepiot[edge]'`; see pyproject.toml for the pins).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

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


def load_method(path: Path) -> Any:
    """The `forward` method of a .pte loaded in ExecuTorch's Python runtime."""
    et = executorch_modules()
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
            # copies: the outputs live in the method's planned arena, which the next call overwrites
            per_window.append([np.array(output, copy=True) for output in method.execute(window)])
        return [np.concatenate(outputs, axis=0) for outputs in zip(*per_window, strict=True)]

    return run


def executorch_call(path: Path, sample_inputs: tuple[Tensor, ...]) -> Callable[[], Any]:
    """One batch-1 call of the program on fixed inputs (for latency timing)."""
    method = load_method(path)
    window = [value[:EXECUTORCH_BATCH_SIZE].contiguous() for value in sample_inputs]
    return lambda: method.execute(window)
