"""The registered `latency` cost: a profile's latency model priced on a structure's layers for sampled masks."""

from __future__ import annotations

import pytest
import torch

from deepiot.compression.reward import CriticConfig, Reward
from deepiot.cost.registry import get_cost_function
from deepiot.device import KindModel, LatencyModel, attach_latency_model, predict_latency
from deepiot.device.layers import LAYER_KINDS
from deepiot.models import LeNet5
from deepiot.structure import Structure


def macs_proportional_model(ms_per_mac: float = 1e-6, per_layer_ms: float = 0.01) -> LatencyModel:
    """Every layer: per_layer_ms + ms_per_mac · MACs; no overhead."""
    kind = KindModel((per_layer_ms, ms_per_mac, 0.0, 0.0, 0.0, 0.0), (), 0.0)
    return LatencyModel(dict.fromkeys(LAYER_KINDS, kind))


@pytest.fixture()
def lenet():
    model = LeNet5().eval()
    return model, Structure.from_model(model, torch.randn(2, 1, 28, 28))


def test_latency_cost_needs_an_attached_profile(lenet):
    _, structure = lenet
    assert CriticConfig(cost="latency").cost == "latency"  # registered on first use
    with pytest.raises(ValueError, match="needs a device profile attached"):
        Reward(structure, cost="latency")


def test_latency_cost_is_layers_plus_macs_of_each_masked_structure(lenet):
    model, structure = lenet
    attach_latency_model(structure, model, macs_proportional_model())
    counts = {"conv1": 5, "conv2": 10, "fc1": 20}
    expected = 4 * 0.01 + 1e-6 * structure.cost(counts).macs  # four layers
    assert predict_latency(structure, counts) == pytest.approx(expected)
    masks = {name: torch.zeros(3, size) for name, size in structure.group_sizes.items()}  # [N=3, size]
    for name, count in counts.items():
        masks[name][0, :count] = 1.0
    masks = {
        name: mask.index_fill(0, torch.tensor([1]), 1.0) for name, mask in masks.items()
    }  # row 1: all kept
    cost = get_cost_function("latency")(structure, masks)
    assert cost.shape == (3,)
    assert cost[0].item() == pytest.approx(expected, rel=1e-6)
    assert cost[1].item() == pytest.approx(4 * 0.01 + 1e-6 * structure.cost().macs, rel=1e-6)
    reward = Reward(structure, cost="latency", lam=1.0)
    assert reward.cost_ratio(masks)[1].item() == pytest.approx(1.0)


def test_latency_cost_of_soft_masks_has_a_gradient(lenet):
    model, structure = lenet
    attach_latency_model(structure, model, macs_proportional_model())
    keep_probs = {
        name: torch.full((size,), 0.5, requires_grad=True) for name, size in structure.group_sizes.items()
    }
    cost = get_cost_function("latency")(structure, {name: p[None, :] for name, p in keep_probs.items()})
    cost.sum().backward()
    assert all(bool((p.grad > 0).all()) for p in keep_probs.values())
