"""The registry of cost models the search can price structures by (`critic.cost`, budgets): name → function.

It sits below both users: `deepiot.compression` (the reward and the budget controller look costs up here)
and `deepiot.device` (which registers the `latency` cost of a device profile) import it, and it imports
neither. The structure's own costs (`params`, `macs`, `activation_bytes`, `model_bytes`, the fields of
`Cost`) are registered here; `deepiot.device.cost` registers `latency` when imported, which importing
`deepiot.compression` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deepiot.cost.types import Cost

if TYPE_CHECKING:
    from deepiot.structure import Structure

# A cost model: (structure, masks {group: [N, size]} in [0, 1]) → cost of each of the N structures [N].
# Masks may be soft (keep probabilities); cost models should then stay differentiable.
CostFunction = Callable[["Structure", Mapping[str, Tensor]], Tensor]
COST_FUNCTIONS: dict[str, CostFunction] = {}


def register_cost(name: str) -> Callable[[CostFunction], CostFunction]:
    """Decorator adding a cost model to `COST_FUNCTIONS` under `name` (e.g. a latency or energy model)."""

    def add(function: CostFunction) -> CostFunction:
        if name in COST_FUNCTIONS:
            raise ValueError(f"a cost function named {name!r} is already registered.")
        COST_FUNCTIONS[name] = function
        return function

    return add


def get_cost_function(name: str) -> CostFunction:
    """The registered cost model `name`; ValueError listing the known names otherwise."""
    if name not in COST_FUNCTIONS:
        raise ValueError(f"unknown cost {name!r}; registered cost functions: {sorted(COST_FUNCTIONS)}.")
    return COST_FUNCTIONS[name]


def _kept_counts(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: mask.sum(dim=-1) for name, mask in masks.items()}  # [N, size] → [N]


def _device_of(tensors: Mapping[str, Tensor]) -> torch.device:
    return next(iter(tensors.values())).device


def _structure_cost_field(field_name: str) -> CostFunction:
    def cost(structure: Structure, masks: Mapping[str, Tensor]) -> Tensor:
        value, device = getattr(structure.cost(_kept_counts(masks)), field_name), _device_of(masks)
        return torch.as_tensor(value, dtype=torch.float32, device=device)

    cost.__doc__ = f"`{field_name}` of each sampled structure, from the structure's real module shapes."
    return cost


for _field in Cost._fields:
    register_cost(_field)(_structure_cost_field(_field))
