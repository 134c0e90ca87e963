"""Resource cost of models: parameters, MACs, memory and measured latency, from real shapes."""

from __future__ import annotations

from deepiot.cost.counter import measure_cost
from deepiot.cost.latency import LatencyStats, measure_latency, measure_onnx_latency
from deepiot.cost.types import Cost

__all__ = ["Cost", "LatencyStats", "measure_cost", "measure_latency", "measure_onnx_latency"]
