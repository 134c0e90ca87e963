"""The critic's judgement of a sampled structure: the reward, its resource cost, and the baselines.

Reward (docs/design.md §3): r_i = −ℓ_i − λ · cost(z_i) / cost(original), with ℓ_i the task loss of sample i under its
mask z_i; λ = 0 is the paper. The compressor follows mean_i[adv_i · ∇ log P(z_i)] with adv_i = (r_i − b) /
max(1, s). With λ = 0 this is exactly the paper's (ℓ_i − b_ℓ)/max(1, s) descent direction, since r = −ℓ.

Baselines b:
- `EMABaseline` (the paper): b = EMA (decay 0.9) of the batch-mean reward, s = EMA of the batch std.
- `LearnedBaseline`: a small MLP Q(features of z) predicting the reward of a sampled structure from its
  per-group kept fractions and cost. A baseline that depends on the sampled z biases REINFORCE, so it is
  used as a control variate: the estimate gains the term ∇ E_z[Q(z)] ≈ ∇ Q(features of E[z] = p')
  (exact for a Q linear in the kept fractions; the delta-method approximation otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from deepiot.cost.registry import get_cost_function

if TYPE_CHECKING:
    from deepiot.structure import Structure

BASELINES = ("ema", "learned")


def _device_of(tensors: Mapping[str, Tensor]) -> torch.device:
    return next(iter(tensors.values())).device


MASK_SCALES = ("none", "inverted")
MIN_KEEP_SCALE_PROB = 0.1  # inverted scaling divides by at least this (an element kept at p≈0 would explode)


def scale_critic_masks(
    masks: Mapping[str, Tensor],
    keep_probs: Mapping[str, Tensor],
    mask_scale: str,
    recurrent: Collection[str] = (),
) -> dict[str, Tensor]:
    """The masks the critic trains under: z as sampled ("none"), or z / max(p, 0.1) ("inverted": inverted dropout,
    E[z / p] = 1, so the expected activation of every element is the unmasked one). z: [N, size], p: [size].

    Groups named in `recurrent` keep z: their mask multiplies the hidden state at every time step inside the
    recurrence, so a 1/p scale would compound over the sequence (2^128 for p = 0.5 over 128 steps; measured: the
    critic loss of DeepSense's GRU reached 4.6e6 at the first step)."""
    if mask_scale == "none":
        return dict(masks)
    return {
        name: mask if name in recurrent else mask / keep_probs[name].detach().clamp_min(MIN_KEEP_SCALE_PROB)
        for name, mask in masks.items()
    }


@dataclass(frozen=True)
class CriticConfig:
    """How the critic (the model being compressed) trains and how its judgement becomes a reward.

    Defaults are the paper's: Adam lr 1e-4, betas (0.5, 0.9), L2 5e-4; EMA baseline with decay 0.9; λ = 0.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 5e-4
    baseline: str = "ema"  # "ema" | "learned"
    ema_decay: float = 0.9
    lam: float = 0.0  # weight of the cost term in the reward
    cost: str = "params"  # a name in deepiot.cost.registry.COST_FUNCTIONS
    value_hidden: int = 64  # LearnedBaseline width
    value_lr: float = 1e-3  # LearnedBaseline Adam learning rate
    distill_weight: float = (
        0.0  # a: the critic's loss is (1−a)·CE + a·T²·KL(original ‖ critic); 0 = the paper
    )
    temperature: float = 4.0  # T of the distillation
    # the critic step's masks: "none" multiplies each element by z ~ Bernoulli(p) (the paper's code); "inverted"
    # by z / max(p, MIN_KEEP_SCALE_PROB) (linear and conv groups; recurrent ones keep z), so every such element's
    # expected activation is what the full model computes
    mask_scale: str = "none"

    def __post_init__(self) -> None:
        if self.mask_scale not in MASK_SCALES:
            raise ValueError(f"critic.mask_scale must be one of {MASK_SCALES}, got {self.mask_scale!r}.")
        if not self.lr > 0 or not self.value_lr > 0:
            raise ValueError(f"critic.lr and critic.value_lr must be > 0, got {self.lr} and {self.value_lr}.")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"critic.betas must be two numbers in [0, 1), got {self.betas}.")
        if self.weight_decay < 0 or self.lam < 0:
            raise ValueError(
                f"critic.weight_decay and critic.lam must be >= 0, got {self.weight_decay} and {self.lam}."
            )
        if self.baseline not in BASELINES:
            raise ValueError(f"critic.baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"critic.ema_decay must be in [0, 1), got {self.ema_decay}.")
        if not 0.0 <= self.distill_weight <= 1.0 or not self.temperature > 0:
            raise ValueError(
                f"critic.distill_weight must be in [0, 1] and critic.temperature > 0, got {self.distill_weight} "
                f"and {self.temperature}."
            )
        if self.value_hidden <= 0:
            raise ValueError(f"critic.value_hidden must be positive, got {self.value_hidden}.")
        get_cost_function(self.cost)


class RewardBatch(NamedTuple):
    """Reward of N sampled structures and its parts, each [N]."""

    reward: Tensor
    loss: Tensor
    cost_ratio: Tensor  # cost(z_i) / cost(original)


class Reward:
    """r_i = −ℓ_i − λ·cost(z_i)/cost(original); the original's cost comes from the same cost model."""

    def __init__(self, structure: Structure, cost: str = "params", lam: float = 0.0) -> None:
        self.structure = structure
        self.cost_function = get_cost_function(cost)
        self.lam = lam
        # [1, size]: keep all; on the CPU on purpose, the original's cost is kept as a Python float
        full = {group.name: torch.ones(1, group.size) for group in structure.groups}
        self.original_cost = float(self.cost_function(structure, full)[0])
        if not self.original_cost > 0:
            raise ValueError(f"cost {cost!r} of the original model is {self.original_cost}; it must be > 0.")

    def cost_ratio(self, masks: Mapping[str, Tensor]) -> Tensor:
        """cost(z) / cost(original) for masks {group: [N, size]} (soft masks allowed): [N]."""
        return self.cost_function(self.structure, masks) / self.original_cost

    def expected_cost_ratio(self, keep_probs: Mapping[str, Tensor]) -> Tensor:
        """cost(E[z]) / cost(original) for keep probabilities {group: [size]}, differentiable in them: [1].

        Cost models need not be differentiable (the structure's is not), so the gradient comes from the
        slope of the cost per kept element of each group (`cost_slopes`) — exact for costs linear in each
        group's count (params, MACs, model bytes).
        """
        ratio, slopes = self.cost_slopes(keep_probs)
        counts = torch.stack([prob.sum() for prob in keep_probs.values()])  # [G], carries the gradient
        return ratio + (slopes * (counts - counts.detach())).sum()

    def cost_slopes(self, keep_probs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(cost(E[z]) / cost(original) [1], its slope per kept element of each group [G]), not differentiable.

        The slopes are measured in one vectorised call by adding (or, for a full group, removing) one element
        per group.
        """
        names = list(keep_probs)
        probs = {name: prob.detach() for name, prob in keep_probs.items()}
        # [G]: +1 element per group, or −1 for a group that is (nearly) full
        signs = [1.0 if float(p.sum()) + 1 <= p.numel() else -1.0 for p in probs.values()]
        steps = torch.tensor(signs, device=_device_of(probs))
        # row 0: E[z]; row g: E[z] with one element more (or fewer) in group g — each [G + 1, size]
        rows = {name: prob.expand(len(names) + 1, prob.numel()).clone() for name, prob in probs.items()}
        for row, name in enumerate(names, start=1):
            rows[name][row] += steps[row - 1] / probs[name].numel()
        ratios = self.cost_ratio(rows)  # [G + 1]: E[z], then E[z] with group g changed
        return ratios[:1], (ratios[1:] - ratios[0]) / steps  # [1], [G]: cost ratio per kept element

    def __call__(self, losses: Tensor, masks: Mapping[str, Tensor]) -> RewardBatch:
        cost_ratio = self.cost_ratio(masks)
        return RewardBatch(-losses - self.lam * cost_ratio, losses, cost_ratio)


def structure_features(masks: Mapping[str, Tensor], cost_ratio: Tensor) -> Tensor:
    """The learned baseline's input: per-group kept fractions and the cost ratio, [N, groups + 1]."""
    fractions = [mask.mean(dim=-1) for mask in masks.values()]  # each [N, size] → [N]
    return torch.stack([*fractions, cost_ratio], dim=1)  # [N, G + 1]


def expected_features(keep_probs: Mapping[str, Tensor], reward: Reward) -> Tensor:
    """`structure_features` of the expected mask E[z] = p', differentiable in p': [1, groups + 1]."""
    expected_masks = {name: prob.unsqueeze(0) for name, prob in keep_probs.items()}  # [size] → [1, size]
    return structure_features(expected_masks, reward.expected_cost_ratio(keep_probs))


class BiasCorrectedEMA:
    """Exponential moving average with TensorFlow's zero-debias: avg_t = shadow_t / (1 − decay^t)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.shadow = 0.0
        self.count = 0

    def update(self, value: float) -> float:
        self.shadow = self.decay * self.shadow + (1.0 - self.decay) * value
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        return self.shadow / (1.0 - self.decay**self.count) if self.count else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"shadow": self.shadow, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow, self.count = float(state["shadow"]), int(state["count"])


class Baseline(Protocol):
    """Turns rewards of sampled structures into advantages for the compressor's REINFORCE step."""

    def advantages(self, rewards: Tensor, features: Tensor) -> Tensor: ...

    def control_variate(self, keep_probs: Mapping[str, Tensor], reward: Reward) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class EMABaseline:
    """The paper's baseline: adv_i = (r_i − b)/max(1, s), b and s bias-corrected EMAs of batch mean and std.

    Each call first folds the batch into the averages (as the paper's code runs the EMA update with the
    compressor step), then uses them.
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.mean = BiasCorrectedEMA(decay)
        self.std = BiasCorrectedEMA(decay)

    def advantages(self, rewards: Tensor, features: Tensor) -> Tensor:
        baseline = self.mean.update(float(rewards.mean()))
        scale = max(1.0, self.std.update(float(rewards.std(unbiased=False))))
        return (rewards - baseline) / scale

    def control_variate(self, keep_probs: Mapping[str, Tensor], reward: Reward) -> Tensor:
        # an action-independent baseline needs no correction
        return next(iter(keep_probs.values())).new_zeros(())

    @property
    def value(self) -> float:
        return self.mean.value

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.state_dict(), "std": self.std.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean.load_state_dict(state["mean"])
        self.std.load_state_dict(state["std"])


class LearnedBaseline:
    """A small MLP Q(kept fractions, cost ratio) → reward, trained by MSE on every batch it judges.

    adv_i = (r_i − Q(f(z_i))) / max(1, s) with s the EMA batch std of the rewards (as `EMABaseline`), plus
    the control-variate correction Q(f(p')) / max(1, s) whose gradient flows into the compressor only.
    Q is evaluated before its MSE step on the batch, so a sample never judges itself.
    """

    def __init__(
        self,
        num_features: int,
        hidden: int = 64,
        lr: float = 1e-3,
        ema_decay: float = 0.9,
        device: torch.device | str | None = None,
    ) -> None:
        # initialised on the CPU (same weights on every device), then moved
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.reward_mean = BiasCorrectedEMA(ema_decay)  # centres the targets: the MLP learns the shape only
        self.std = BiasCorrectedEMA(ema_decay)
        self.scale = 1.0
        self.last_mse = math.nan

    def predict(self, features: Tensor) -> Tensor:
        """Predicted reward of each structure, [N, F] → [N]; gradients reach the features, not the MLP."""
        frozen = {name: param.detach() for name, param in self.net.named_parameters()}
        centred = torch.func.functional_call(self.net, frozen, (features,))  # [N, 1]
        return centred.squeeze(-1) + self.reward_mean.value

    def advantages(self, rewards: Tensor, features: Tensor) -> Tensor:
        self.reward_mean.update(float(rewards.mean()))
        self.scale = max(1.0, self.std.update(float(rewards.std(unbiased=False))))
        predicted = self.predict(features.detach())
        self._fit(features.detach(), rewards.detach())
        return (rewards - predicted) / self.scale

    def control_variate(self, keep_probs: Mapping[str, Tensor], reward: Reward) -> Tensor:
        """Q at the features of the expected mask p', scaled like the advantages; differentiable in p'."""
        return self.predict(expected_features(keep_probs, reward)).sum() / self.scale

    def _fit(self, features: Tensor, rewards: Tensor) -> None:
        """One Adam step on the MSE between predicted and observed rewards."""
        self.optimizer.zero_grad(set_to_none=True)
        predicted = self.net(features).squeeze(-1) + self.reward_mean.value  # [N, 1] → [N]
        loss = (predicted - rewards).pow(2).mean()
        loss.backward()
        self.optimizer.step()
        self.last_mse = float(loss.detach())

    @property
    def value(self) -> float:
        return self.reward_mean.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "reward_mean": self.reward_mean.state_dict(),
            "std": self.std.state_dict(),
            "scale": self.scale,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.reward_mean.load_state_dict(state["reward_mean"])
        self.std.load_state_dict(state["std"])
        self.scale = float(state["scale"])


def build_baselines(
    config: CriticConfig, num_groups: int, device: torch.device | str | None = None
) -> dict[str, Baseline]:
    """Both baselines, keyed by name: the configured one drives the compressor, the other is measured
    on the same batches so the two gradient variances can be compared. The learned one lives on `device`."""
    return {
        "ema": EMABaseline(config.ema_decay),
        "learned": LearnedBaseline(
            num_groups + 1, config.value_hidden, config.value_lr, config.ema_decay, device=device
        ),
    }
