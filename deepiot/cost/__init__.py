"""Resource cost of models: parameters, MACs, memory and measured latency, from real shapes; and the registry of
cost models the search prices structures by (`registry`: `register_cost`, `get_cost_function`)."""

from __future__ import annotations

from deepiot.cost.counter import measure_cost
from deepiot.cost.latency import LatencyStats, measure_latency, measure_onnx_latency
from deepiot.cost.registry import COST_FUNCTIONS, get_cost_function, register_cost
from deepiot.cost.types import Cost

__all__ = [
    "COST_FUNCTIONS",
    "Cost",
    "LatencyStats",
    "get_cost_function",
    "measure_cost",
    "measure_latency",
    "measure_onnx_latency",
    "register_cost",
]
