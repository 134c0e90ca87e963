"""Measured host-CPU latency at batch 1: PyTorch modules / TorchScript / any callable, and ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
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
    return time_interleaved({"call": call}, warmup, repeats, rounds=1)["call"]


def time_interleaved(
    calls: Mapping[str, Callable[[], Any]], warmup: int, repeats: int, rounds: int = 10
) -> dict[str, LatencyStats]:
    """Time several calls side by side: `rounds` rounds, each timing every call repeats/rounds times in turn.

    Interleaving spreads slow drifts of a shared machine (other jobs, clock changes) over all candidates
    instead of charging them to whichever ran last. Every call gets `repeats` timed runs in total.
    """
    if repeats < 1 or warmup < 0 or not 1 <= rounds <= repeats:
        raise ValueError(
            f"latency needs repeats >= 1, warmup >= 0 and 1 <= rounds <= repeats, "
            f"got repeats={repeats}, warmup={warmup}, rounds={rounds}"
        )
    for call in calls.values():
        for _ in range(warmup):
            call()
    durations_ns = {name: np.empty(repeats, dtype=np.float64) for name in calls}
    bounds = np.linspace(0, repeats, rounds + 1).astype(int)  # round r times runs bounds[r]:bounds[r+1]
    for start_index, end_index in zip(bounds[:-1], bounds[1:], strict=True):
        for name, call in calls.items():
            for index in range(start_index, end_index):
                start = time.perf_counter_ns()
                call()
                durations_ns[name][index] = time.perf_counter_ns() - start
    return {name: _stats(durations / 1e6) for name, durations in durations_ns.items()}


def _stats(durations_ms: np.ndarray) -> LatencyStats:
    p10, median, p90 = np.percentile(durations_ms, [10, 50, 90])
    return LatencyStats(
        median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90), repeats=len(durations_ms)
    )


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
    return time_calls(onnx_call(model_path, example_inputs, threads), warmup, repeats)


def onnx_call(model_path: str | Path, example_inputs: ExampleInputs, threads: int = 1) -> Callable[[], Any]:
    """A no-argument callable running the ONNX model once on the batch-1 example (for `time_interleaved`)."""
    session = onnx_session(model_path, threads)
    feed = onnx_feed(session, as_batch_of_one(example_inputs))
    return lambda: session.run(None, feed)
