"""Resource cost of models: parameters, MACs, memory and measured latency, from real shapes."""

from __future__ import annotations

from deepiot.cost.types import Cost

__all__ = ["Cost"]
