from __future__ import annotations

import pytest
import torch
from torch import nn

from deepiot.cost.latency import LatencyStats, measure_latency, measure_onnx_latency, time_interleaved
from deepiot.models import LeNet300


def assert_consistent(stats: LatencyStats, repeats: int) -> None:
    assert stats.repeats == repeats
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms


def test_module_latency_statistics_are_ordered_and_state_is_restored():
    model = LeNet300().train()
    previous_threads = torch.get_num_threads()
    stats = measure_latency(model, torch.randn(4, 1, 28, 28), threads=1, warmup=2, repeats=15)
    assert_consistent(stats, 15)
    assert torch.get_num_threads() == previous_threads
    assert model.training


def test_callable_runs_at_batch_one_with_requested_threads_and_no_grad():
    seen = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.shape[0], torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return x * 2

    original_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        measure_latency(probe, torch.randn(5, 3), threads=1, warmup=1, repeats=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original_threads)
    assert seen == [(1, 1, True)] * 4


def test_interleaved_timing_alternates_candidates_round_by_round():
    order = []
    stats = time_interleaved(
        {"original": lambda: order.append("o"), "sliced": lambda: order.append("s")},
        warmup=1,
        repeats=4,
        rounds=2,
    )
    assert (
        "".join(order) == "o" + "s" + "oo" + "ss" + "oo" + "ss"
    )  # warmup, then two rounds of two calls each
    assert all(entry.repeats == 4 for entry in stats.values())


def test_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(nn.Identity(), torch.randn(1, 3), repeats=0)


def test_onnx_runtime_latency(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(1, 6),), str(path), dynamo=False, input_names=["input"])
    stats = measure_onnx_latency(path, torch.randn(1, 6), warmup=2, repeats=10)
    assert_consistent(stats, 10)
    with pytest.raises(ValueError, match="expects 1 inputs"):
        measure_onnx_latency(path, (torch.randn(1, 6), torch.randn(1, 6)), repeats=1)
