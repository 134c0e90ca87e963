"""Reward, cost registry and baselines, against hand computations in NumPy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from deepiot.compression.reward import (
    CriticConfig,
    EMABaseline,
    LearnedBaseline,
    Reward,
    structure_features,
)
from deepiot.cost.registry import COST_FUNCTIONS, get_cost_function, register_cost
from deepiot.cost.types import Cost


class _Group:
    def __init__(self, name: str, size: int) -> None:
        self.name, self.size, self.kind = name, size, "linear"


class ToyStructure:
    """Two FC layers 10 → a(4) → b(3) → 2 outputs; costs from the kept counts like the real structure."""

    groups = [_Group("a", 4), _Group("b", 3)]

    def cost(self, kept: Mapping[str, torch.Tensor] | None = None) -> Cost:
        kept = kept or {"a": 4, "b": 3}
        a, b = kept["a"], kept["b"]
        params = (10 + 1) * a + (a + 1) * b + (b + 1) * 2
        macs = 10 * a + a * b + b * 2
        return Cost(params, macs, 4 * (10 + a), 4 * params)


def test_reward_is_negative_loss_minus_lambda_cost_ratio():
    structure = ToyStructure()
    reward = Reward(structure, cost="params", lam=0.5)
    masks = {"a": torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]]), "b": torch.tensor([[1.0, 1, 1], [1, 0, 0]])}
    losses = torch.tensor([0.2, 1.0])
    batch = reward(losses, masks)
    original = 11 * 4 + 5 * 3 + 4 * 2
    small = 11 * 1 + 2 * 1 + 2 * 2
    torch.testing.assert_close(batch.cost_ratio, torch.tensor([1.0, small / original]))
    torch.testing.assert_close(batch.reward, -losses - 0.5 * torch.tensor([1.0, small / original]))


def test_lambda_zero_is_the_papers_reward():
    batch = Reward(ToyStructure(), cost="macs", lam=0.0)(
        torch.tensor([0.3]), {"a": torch.ones(1, 4), "b": torch.ones(1, 3)}
    )
    assert batch.reward.item() == pytest.approx(-0.3)


def test_cost_registry_knows_the_structure_costs_and_accepts_new_models():
    assert {"params", "macs", "activation_bytes", "model_bytes"} <= set(COST_FUNCTIONS)
    assert "latency" in COST_FUNCTIONS  # registered by deepiot.device.cost, which deepiot.compression imports
    with pytest.raises(ValueError, match=r"unknown cost 'energy'.*registered cost functions"):
        get_cost_function("energy")

    @register_cost("toy_kept_elements")
    def kept_elements(structure, masks):
        return sum(mask.sum(dim=-1) for mask in masks.values())

    try:
        reward = Reward(ToyStructure(), cost="toy_kept_elements", lam=1.0)
        assert reward.original_cost == 7
        with pytest.raises(ValueError, match="already registered"):
            register_cost("toy_kept_elements")(kept_elements)
    finally:
        del COST_FUNCTIONS["toy_kept_elements"]


def test_ema_baseline_matches_hand_computation():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 2.0, size=16).astype(np.float32) for loc in (-2.0, -1.5, -0.5)]
    baseline = EMABaseline(decay=0.9)
    mean_shadow = std_shadow = 0.0
    for step, rewards in enumerate(batches, start=1):
        mean_shadow = 0.9 * mean_shadow + 0.1 * rewards.mean()
        std_shadow = 0.9 * std_shadow + 0.1 * rewards.std()  # population std, as tf.nn.moments
        b = mean_shadow / (1 - 0.9**step)
        s = std_shadow / (1 - 0.9**step)
        expected = (rewards - b) / max(1.0, s)
        got = baseline.advantages(torch.from_numpy(rewards), torch.zeros(16, 3))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert baseline.value == pytest.approx(b, rel=1e-5)


def test_ema_baseline_state_round_trip():
    baseline = EMABaseline()
    baseline.advantages(torch.randn(8), torch.zeros(8, 2))
    restored = EMABaseline()
    restored.load_state_dict(baseline.state_dict())
    rewards = torch.randn(8)
    torch.testing.assert_close(restored.advantages(rewards, None), baseline.advantages(rewards, None))


def test_learned_baseline_learns_the_reward_of_a_structure():
    torch.manual_seed(0)
    baseline = LearnedBaseline(num_features=2, hidden=16, lr=1e-2)
    for _ in range(400):
        features = torch.rand(64, 2)
        rewards = -3.0 * features[:, 0] + features[:, 1]
        baseline.advantages(rewards, features)
    test_features = torch.rand(256, 2)
    error = (
        (baseline.predict(test_features) - (-3.0 * test_features[:, 0] + test_features[:, 1])).abs().mean()
    )
    assert error.item() < 0.1
    # a well-fitted baseline leaves advantages much smaller than the reward spread
    advantages = baseline.advantages(-3.0 * test_features[:, 0] + test_features[:, 1], test_features)
    assert advantages.std().item() < 0.2


def test_learned_baseline_control_variate_reaches_the_keep_probabilities_not_the_network():
    baseline = LearnedBaseline(num_features=3)
    baseline.advantages(torch.randn(8), torch.rand(8, 3))
    baseline.optimizer.zero_grad(set_to_none=True)
    keep_probs = {
        "a": torch.full((4,), 0.5, requires_grad=True),
        "b": torch.full((3,), 0.7, requires_grad=True),
    }
    baseline.control_variate(keep_probs, Reward(ToyStructure(), cost="params")).backward()
    assert keep_probs["a"].grad.abs().sum() > 0 and keep_probs["b"].grad.abs().sum() > 0
    assert all(param.grad is None for param in baseline.net.parameters())


def test_ema_baseline_needs_no_control_variate():
    keep_probs = {
        "a": torch.full((4,), 0.5, requires_grad=True),
        "b": torch.full((3,), 0.5, requires_grad=True),
    }
    assert EMABaseline().control_variate(keep_probs, Reward(ToyStructure())).item() == 0.0


def test_structure_features_are_kept_fractions_and_cost():
    masks = {"a": torch.tensor([[1.0, 1, 0, 0]]), "b": torch.tensor([[1.0, 0, 0]])}
    features = structure_features(masks, torch.tensor([0.25]))
    torch.testing.assert_close(features, torch.tensor([[0.5, 1 / 3, 0.25]]))


@pytest.mark.parametrize("cost", ["params", "macs"])
def test_expected_cost_ratio_has_the_exact_gradient_of_the_cost_polynomial(cost):
    reward = Reward(ToyStructure(), cost=cost)
    keep_probs = {
        "a": torch.tensor([0.9, 0.5, 0.2, 1.0], requires_grad=True),
        "b": torch.tensor([1.0, 1.0, 1.0], requires_grad=True),
    }
    ratio = reward.expected_cost_ratio(keep_probs)
    ratio.sum().backward()
    a, b = 2.6, 3.0  # expected kept counts (group b is full: its slope is measured by removing one element)
    original = reward.original_cost
    value = {"params": 11 * a + (a + 1) * b + (b + 1) * 2, "macs": 10 * a + a * b + b * 2}[cost]
    d_a = {"params": 11 + b, "macs": 10 + b}[cost]  # ∂cost/∂a, the same for every element of group a
    d_b = {"params": a + 1 + 2, "macs": a + 2}[cost]
    assert ratio.item() == pytest.approx(value / original, rel=1e-6)
    torch.testing.assert_close(keep_probs["a"].grad, torch.full((4,), d_a / original))
    torch.testing.assert_close(keep_probs["b"].grad, torch.full((3,), d_b / original))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "critic.lr"),
        ({"betas": (0.5, 1.0)}, "betas"),
        ({"baseline": "value"}, "critic.baseline"),
        ({"cost": "energy"}, "unknown cost"),
        ({"lam": -1.0}, "lam"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_bad_critic_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CriticConfig(**kwargs)
