"""The registered `latency` cost: a device profile's latency model priced on the structure's layer shapes.

A cost model maps (structure, masks {group: [N, size]}) → cost [N] (see `deepiot.cost.registry`). Latency needs
two things a structure does not hold — the layers' spatial geometry and a device profile — so they are
attached to the structure once, before the search:

    structure = Structure.from_model(model, example)
    attach_latency_model(structure, model, "experiments/device/device_profile.json")
    Reward(structure, cost="latency")  # or critic.cost=latency
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deepiot.cost.registry import register_cost
from deepiot.device.latency_model import LatencyModel
from deepiot.device.layers import LayerSpec, features_at, layer_inventory
from deepiot.device.profile import load_profile
from deepiot.structure import Structure

Number = float | Tensor
_ATTACHED: weakref.WeakKeyDictionary[Structure, LatencyPredictor] = weakref.WeakKeyDictionary()


class LatencyPredictor:
    """Predicted batch-1 latency (ms) of a structure for any kept counts: Σ layer models + overhead."""

    def __init__(self, inventory: tuple[LayerSpec, ...], latency_model: LatencyModel) -> None:
        uncovered = [
            f"{spec.name} ({spec.kind})" for spec in inventory if spec.kind not in latency_model.kinds
        ]
        if uncovered:
            raise ValueError(
                f"the device profile has no latency model for layer(s) {', '.join(uncovered)}: it covers "
                f"{sorted(latency_model.kinds)} layers only. Profile again with a reference model of those "
                "layer kinds (deepiot-profile architectures=[...], e.g. deepsense for conv1d and gru)."
            )
        self.inventory = inventory
        self.latency_model = latency_model

    def rows(self, counts: Mapping[str, Number]) -> list[dict[str, Any]]:
        """One {"name", "kind", "features"} row per layer at these kept counts."""
        return [
            {"name": spec.name, "kind": spec.kind, "features": features_at(spec, counts)}
            for spec in self.inventory
        ]

    def predict(self, counts: Mapping[str, Number]) -> Number:
        """Latency in ms; a float for int counts, a Tensor [N] (differentiable) for Tensor counts [N]."""
        return self.latency_model.model_ms(self.rows(counts))

    def per_layer(self, counts: Mapping[str, Number]) -> dict[str, Number]:
        """Predicted time of every layer (ms), for reports: where the time goes."""
        return {
            row["name"]: self.latency_model.layer_ms(row["kind"], row["features"])
            for row in self.rows(counts)
        }


def as_latency_model(profile: str | Path | Mapping[str, Any] | LatencyModel) -> LatencyModel:
    """A `LatencyModel` from a profile path/folder, a loaded profile document, or a model itself."""
    if isinstance(profile, LatencyModel):
        return profile
    document = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    return LatencyModel.from_dict(document["latency_model"])


def attach_latency_model(
    structure: Structure, model: nn.Module, profile: str | Path | Mapping[str, Any] | LatencyModel
) -> LatencyPredictor:
    """Make `cost=latency` usable for `structure` (its layers read from `model`, priced by `profile`)."""
    predictor = LatencyPredictor(layer_inventory(model, structure), as_latency_model(profile))
    _ATTACHED[structure] = predictor
    return predictor


def predict_latency(structure: Structure, kept_counts: Mapping[str, Number] | None = None) -> Number:
    """Predicted latency (ms) of `structure` with `kept_counts[g]` elements in group g (missing: all)."""
    counts: dict[str, Number] = dict(structure.group_sizes)
    counts.update(kept_counts or {})
    return _predictor(structure).predict(counts)


def is_attached(structure: Structure) -> bool:
    """Whether `attach_latency_model` gave `structure` a latency model."""
    return structure in _ATTACHED


def _predictor(structure: Structure) -> LatencyPredictor:
    if structure not in _ATTACHED:
        raise ValueError(
            "cost 'latency' needs a device profile attached to the structure: call "
            "deepiot.device.attach_latency_model(structure, model, 'device_profile.json') first "
            "(make a profile with deepiot-profile)."
        )
    return _ATTACHED[structure]


@register_cost("latency")
def latency_cost(structure: Structure, masks: Mapping[str, Tensor]) -> Tensor:
    """Predicted device latency (ms) of each of the N masked structures [N] (soft masks: differentiable)."""
    counts = {name: mask.sum(dim=-1).to(torch.float64) for name, mask in masks.items()}  # [N, size] → [N]
    batch = max(mask.shape[0] for mask in masks.values())
    return torch.as_tensor(predict_latency(structure, counts), dtype=torch.float64).expand(batch).float()
