"""Measured host-CPU latency at batch 1: PyTorch modules / TorchScript / any callable, and ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from deepiot.cost.counter import ExampleInputs, as_batch_of_one


class LatencyStats(NamedTuple):
    """Wall-clock time of one call in milliseconds: median and 10th/90th percentiles over `repeats` calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> LatencyStats:
    """Run `call` `warmup` times untimed, then time `repeats` calls one by one."""
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}"
        )
    for _ in range(warmup):
        call()
    durations_ns = np.empty(repeats, dtype=np.float64)
    for index in range(repeats):
        start = time.perf_counter_ns()
        call()
        durations_ns[index] = time.perf_counter_ns() - start
    p10, median, p90 = np.percentile(durations_ns / 1e6, [10, 50, 90])
    return LatencyStats(median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90), repeats=repeats)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block and restore the previous value afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def eval_mode(model: Callable[..., Any]) -> Iterator[None]:
    """Put an nn.Module (incl. TorchScript) in eval mode for the block, restoring its training flag."""
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if was_training is not None:
            model.train(was_training)


def measure_latency(
    model_or_callable: Callable[..., Any],
    example_inputs: ExampleInputs,
    threads: int = 1,
    warmup: int = 20,
    repeats: int = 200,
) -> LatencyStats:
    """Time one batch-1 forward pass of a module, TorchScript module or callable on the host CPU.

    Runs in eval mode under `torch.inference_mode()` with `threads` intra-op threads; the previous
    thread count and the module's training flag are restored afterwards.
    """
    inputs = as_batch_of_one(example_inputs)
    with torch_threads(threads), eval_mode(model_or_callable), torch.inference_mode():
        return time_calls(lambda: model_or_callable(*inputs), warmup, repeats)


def onnx_session(model_path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def onnx_feed(session: Any, inputs: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """Map positional tensors to the session's input names (as numpy arrays)."""
    names = [node.name for node in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"ONNX model expects {len(names)} inputs {names}, got {len(inputs)}")
    return {name: torch.as_tensor(value).numpy() for name, value in zip(names, inputs, strict=True)}


def measure_onnx_latency(
    model_path: str | Path,
    example_inputs: ExampleInputs,
    threads: int = 1,
    warmup: int = 20,
    repeats: int = 200,
) -> LatencyStats:
    """Time one batch-1 run of an ONNX model in ONNX Runtime (CPU, `threads` intra-op threads)."""
    session = onnx_session(model_path, threads)
    feed = onnx_feed(session, as_batch_of_one(example_inputs))
    return time_calls(lambda: session.run(None, feed), warmup, repeats)
