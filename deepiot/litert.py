"""LiteRT export (`model.tflite`): litert-torch converts the model at batch 1 (torch.export → LiteRT's converter),
and the file is checked in LiteRT's own interpreter (ai-edge-litert, XNNPACK delegate, one thread).

Needs the optional `[litert]` extra (litert-torch 0.10, ai-edge-litert 2.3), best in a virtual environment of its
own: litert-torch pulls in jax, jaxlib, transformers and litert-converter (~1 GB), and its xdsl 0.28 pin needs
typing-extensions < 4.13, which downgrades typing-extensions and pydantic in an environment that has newer ones.
`python -m venv --system-site-packages <venv>` keeps the installed torch (litert-torch takes torch >= 2.4, < 2.15).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from torch import Tensor, nn

from deepiot.export import ExportError

LITERT_BATCH_SIZE = 1  # the .tflite takes one window per call; larger batches run window by window
LITERT_INSTALL_HINT = (
    "install the optional extra, best in its own virtual environment: python -m venv --system-site-packages "
    "<venv> && <venv>/bin/pip install 'deepiot[litert]' (litert-torch 0.10, ai-edge-litert 2.3; their xdsl pin "
    "downgrades typing-extensions and pydantic)"
)


class LiteRTError(ExportError):
    """LiteRT is missing, or a model cannot be converted to it or run by its interpreter."""


def litert_modules() -> SimpleNamespace:
    """The converter and interpreter deepiot uses; LiteRTError (with the install command) when missing."""
    try:
        import litert_torch
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise LiteRTError(
            f"the litert export format needs litert-torch and ai-edge-litert, which cannot be imported ({error}); "
            f"{LITERT_INSTALL_HINT}"
        ) from error
    return SimpleNamespace(convert=litert_torch.convert, Interpreter=Interpreter)


def save_litert(model: nn.Module, sample_inputs: tuple[Tensor, ...], path: Path) -> dict[str, Any]:
    """Convert `model` (eval mode) at batch 1 and write the flatbuffer to `path`; return its manifest entries."""
    lite = litert_modules()
    inputs = tuple(value[:LITERT_BATCH_SIZE].contiguous() for value in sample_inputs)
    started = time.perf_counter()
    try:
        lite.convert(model, inputs).export(str(path))
    except Exception as error:
        first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:300]
        raise LiteRTError(
            f"{type(model).__name__} cannot be converted to LiteRT ({type(error).__name__}: {first_line}). The "
            "other export formats do not need this step; export without litert in formats to skip it."
        ) from error
    return {
        "file": path.name,
        "batch_size": LITERT_BATCH_SIZE,
        "bytes": path.stat().st_size,
        "export_seconds": round(time.perf_counter() - started, 2),
        "converter": f"litert-torch {version('litert-torch')}",
        "runtime": f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK delegate, 1 thread)",
    }


def litert_runner(path: Path) -> Callable[[tuple[Tensor, ...]], list[np.ndarray]]:
    """Run inputs of any batch size through the batch-1 model in LiteRT's interpreter, window by window."""
    interpreter = litert_modules().Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inputs_at = [detail["index"] for detail in interpreter.get_input_details()]
    outputs_at = [detail["index"] for detail in interpreter.get_output_details()]

    def run(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
        per_window = []
        for index in range(inputs[0].shape[0]):
            for at, value in zip(inputs_at, inputs, strict=True):
                interpreter.set_tensor(at, value[index : index + 1].contiguous().numpy())
            interpreter.invoke()
            per_window.append([interpreter.get_tensor(at).copy() for at in outputs_at])
        return [np.concatenate(outputs, axis=0) for outputs in zip(*per_window, strict=True)]

    return run


def litert_call(path: Path, sample_inputs: tuple[Tensor, ...]) -> Callable[[], Any]:
    """One batch-1 call of the model on fixed inputs in LiteRT's interpreter, one thread (for latency timing)."""
    interpreter = litert_modules().Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    feed = [
        (detail["index"], value[:LITERT_BATCH_SIZE].contiguous().numpy())
        for detail, value in zip(interpreter.get_input_details(), sample_inputs, strict=True)
    ]

    def call() -> None:
        for at, value in feed:
            interpreter.set_tensor(at, value)
        interpreter.invoke()

    return call
