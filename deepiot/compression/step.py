"""One DeepIoT iteration, in the order of the paper's Algorithm 1 (docs/design.md §2).

`compressor_critic_step` is the algorithm: (1) a critic step under masks sampled from the stored keep
probabilities, (2) a REINFORCE step of the compressor on a fresh batch, (3) store the new probabilities.
The critic is the model under compression (the paper's name); the reward and its baselines are in
`deepiot.compression.reward`. `LoopParts` holds what the step drives, `LoopState` where the loop stands.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepiot.compression.budget import BudgetController, attach_profile, budget_fractions
from deepiot.compression.compressor import Compressor, MaskDistribution, score_variance
from deepiot.compression.config import CompressionConfig
from deepiot.compression.reward import (
    Baseline,
    Reward,
    build_baselines,
    scale_critic_masks,
    structure_features,
)
from deepiot.compression.schedules import ThresholdSchedule, build_schedule
from deepiot.finetune import distillation_loss
from deepiot.runtime import BatchStream, CompressionError, model_device, predict_logits
from deepiot.structure import MaskedNetwork, Structure
from deepiot.utils import DIVERGED_LOSS


class StepStats(NamedTuple):
    """What one compressor-critic iteration measured (for logs; `grad_var` only when asked)."""

    tau: float
    critic_loss: float
    compressor_loss: float
    reward_mean: float
    baseline: float
    advantage_var: float
    entropy: float
    grad_var: dict[str, float]
    expected_cost: dict[str, float]  # E[cost ratio] under the sampling probabilities, per budget
    prices: dict[str, float]  # the budgets' λ after this iteration


@dataclass
class LoopParts:
    """The objects the loop drives; built once per session, their state is what the checkpoint saves."""

    config: CompressionConfig
    structure: Structure
    critic: nn.Module  # the model being compressed (trained in place; a copy of the caller's model)
    network: MaskedNetwork
    compressor: Compressor
    critic_optimizer: torch.optim.Optimizer
    compressor_optimizer: torch.optim.Optimizer
    baselines: dict[str, Baseline]
    reward: Reward
    budget: BudgetController
    schedule: ThresholdSchedule
    batches: BatchStream
    mask_generator: torch.Generator  # on `device`: the mask stream is reproducible per device
    soft_targets: Tensor | None = None  # the original's logits of every training sample, when distilling
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where every tensor lives


@dataclass
class LoopState:
    """Where the loop stands; saved with the parts' state at every evaluation."""

    keep_logits: dict[str, Tensor]  # step 3's stored probabilities (as logits) for the next critic step
    iteration: int = 0
    phase: str = "compress"  # "compress" → "finetune" (the kept set is final)
    unchanged_evaluations: int = 0
    kept: dict[str, list[int]] = field(default_factory=dict)  # kept set at the last evaluation
    stop_reason: str = ""
    original: dict[str, float] = field(default_factory=dict)  # original val/test accuracy
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: dict[str, float] = field(default_factory=lambda: {"compress": 0.0, "finetune": 0.0})


# ---------------------------------------------------------------------------------------------- the algorithm


def compressor_critic_step(parts: LoopParts, state: LoopState, measure_variance: bool = False) -> StepStats:
    """One DeepIoT iteration (docs/design.md §2, steps 1–3), at threshold τ of the current iteration.

    Algorithm 1, phase 2 (joint compression): critic and compressor train together while τ rises on the
    schedule and keep probabilities below τ are multiplied by γ before sampling. During the warm-up
    (phase 1: the first `warmup_iterations`) step 1 is skipped: the critic is frozen, τ stays 0 and the budget
    prices stay where they are; only the compressor learns. Phase 3 (fine-tuning with the fixed mask) is run
    by `deepiot.compression.loop` once the kept set is final.
    """
    warming_up = state.iteration < parts.config.loop.warmup_iterations
    tau = threshold(parts, state.iteration)
    decay = parts.config.schedule.decay
    batch_size = parts.config.loop.batch_size

    # 1. Critic step: masks from the stored, threshold-decayed keep probabilities (p < τ → γ·p), optionally
    #    scaled by 1/p (critic.mask_scale=inverted); one optimizer step of the critic (the model, through its
    #    masks) on the task loss (optionally distilled from the original's logits).
    critic_loss = torch.tensor(math.nan, device=parts.device)
    if not warming_up:
        indices = parts.batches.next_indices()
        inputs, labels = parts.batches.inputs[indices], parts.batches.labels[indices]
        sampling = MaskDistribution(state.keep_logits, tau, decay)
        masks = sampling.sample(batch_size, parts.mask_generator)  # z: {group: [B, size]} of 0/1
        recurrent = [group.name for group in parts.structure.groups if group.kind == "rnn"]
        masks = scale_critic_masks(
            masks, sampling.keep_probs, parts.config.critic.mask_scale, recurrent
        )  # z or z/p
        parts.network.train()
        critic_loss = distillation_loss(
            parts.network(inputs, masks),
            None if parts.soft_targets is None else parts.soft_targets[indices],
            labels,
            parts.config.critic.distill_weight,
            parts.config.critic.temperature,
        )
        check_finite("critic loss", critic_loss, state, tau)
        parts.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        parts.critic_optimizer.step()

    # 2. Compressor step: the compressor re-reads the critic's (just updated) weights; on a fresh batch with
    #    fresh masks z_i ~ Bernoulli(p'), the critic judges each structure (reward r_i = −ℓ_i − λ·cost ratio)
    #    and REINFORCE follows mean_i[adv_i · Σ_groups Σ_j log P(z_ij | p'_j)], adv_i = (r_i − b)/max(1, s);
    #    the budgets add Σ_k λ_k · E[cost_k ratio](p'), whose gradient is exact (no sampling noise).
    inputs, labels = parts.batches.next()
    distribution = MaskDistribution(parts.compressor(weight_matrices(parts)), tau, decay)
    masks = distribution.sample(batch_size, parts.mask_generator)
    parts.network.eval()
    with torch.no_grad():
        losses = F.cross_entropy(parts.network(inputs, masks), labels, reduction="none")  # [N]
    rewards = parts.reward(losses, masks)
    features = structure_features(masks, rewards.cost_ratio)  # [N, G + 1]
    # every baseline sees every batch (so the unused one stays trained); the configured one drives the update
    advantages = {
        name: baseline.advantages(rewards.reward, features) for name, baseline in parts.baselines.items()
    }
    baseline = parts.baselines[parts.config.critic.baseline]
    advantage = advantages[parts.config.critic.baseline]  # [N]
    # the learned baseline depends on z, so its correction term keeps the estimate unbiased (0 for the EMA)
    control_variate = baseline.control_variate(distribution.keep_probs, parts.reward)
    budget_penalty, expected_cost = parts.budget.penalty(distribution.keep_probs)
    compressor_loss = -(advantage * distribution.log_prob(masks)).mean() - control_variate + budget_penalty
    check_finite("compressor loss", compressor_loss, state, tau)
    parts.compressor_optimizer.zero_grad(set_to_none=True)
    compressor_loss.backward()
    parts.compressor_optimizer.step()
    if not warming_up:
        parts.budget.update(expected_cost)  # dual ascent: a budget still exceeded raises its price

    # 3. Store the new probabilities (from the updated compressor) for the next iteration's sampling.
    with torch.no_grad():
        state.keep_logits = parts.compressor(weight_matrices(parts))

    grad_var = {}
    if measure_variance:
        grad_var = {
            name: score_variance(distribution.logits, tau, decay, masks, values)
            for name, values in advantages.items()
        }
    return StepStats(
        tau=tau,
        critic_loss=float(critic_loss.detach()),
        compressor_loss=float(compressor_loss.detach()),
        reward_mean=float(rewards.reward.mean()),
        baseline=baseline.value,
        advantage_var=float(advantage.var()),
        entropy=float(distribution.entropy().detach()),
        grad_var=grad_var,
        expected_cost=expected_cost,
        prices=dict(parts.budget.prices),
    )


def threshold(parts: LoopParts, iteration: int) -> float:
    """τ at `iteration`: 0 during the warm-up, then the schedule's, counted from the end of the warm-up."""
    return parts.schedule(schedule_iteration(parts, iteration))


def schedule_iteration(parts: LoopParts, iteration: int) -> int:
    """Iterations of joint compression so far (the schedule's clock; the warm-up does not count)."""
    return max(0, iteration - parts.config.loop.warmup_iterations)


def build_parts(
    critic: nn.Module,
    structure: Structure,
    train: tuple[Tensor, Tensor],
    config: CompressionConfig,
    device: torch.device | None = None,
) -> LoopParts:
    """Create compressor, optimizers, baselines, reward, schedule and random streams for `critic`, on
    `device` (default: the critic's); modules are initialised on the CPU, then moved (same start anywhere)."""
    device = model_device(critic) if device is None else device
    attach_profile(structure, critic, config.latency_profile, config.latency_needed_by())
    budgets = budget_fractions(structure, asdict(config.loop))  # BudgetError: already met, or impossible
    torch.manual_seed(config.loop.seed)
    compressor = Compressor.for_structure(structure, critic, config.compressor).to(device)
    critic_config = config.critic
    soft_targets = None  # built before any training or restore, so from the original's weights
    if critic_config.distill_weight > 0:
        soft_targets = predict_logits(critic, train[0], config.loop.eval_batch_size)
    return LoopParts(
        config=config,
        structure=structure,
        critic=critic,
        network=MaskedNetwork(critic, structure),
        compressor=compressor,
        critic_optimizer=torch.optim.Adam(
            critic.parameters(),
            lr=critic_config.lr,
            betas=critic_config.betas,
            weight_decay=critic_config.weight_decay,
        ),
        compressor_optimizer=torch.optim.RMSprop(compressor.parameters(), lr=config.compressor.lr),
        baselines=build_baselines(critic_config, len(structure.groups), device),
        reward=Reward(structure, critic_config.cost, critic_config.lam),
        budget=BudgetController(structure, budgets, config.loop.budget_lr, config.loop.budget_pressure),
        schedule=build_schedule(config.schedule),
        batches=BatchStream(*train, config.loop.batch_size, seed=config.loop.seed),
        mask_generator=torch.Generator(device=device).manual_seed(config.loop.seed + 1),
        soft_targets=soft_targets,
        device=device,
    )


def fresh_state(parts: LoopParts) -> LoopState:
    """Initial state: the compressor's first probabilities (≈ 0.8 conv/linear, 0.5 rnn) and the full kept set."""
    with torch.no_grad():
        keep_logits = parts.compressor(weight_matrices(parts))
    kept = {group.name: list(range(group.size)) for group in parts.structure.groups}
    return LoopState(keep_logits=keep_logits, kept=kept)


def weight_matrices(parts: LoopParts) -> dict[str, Tensor]:
    """The critic's current weight matrix of every group, [rows, size] each (re-read every step)."""
    return {
        group.name: parts.structure.weight_matrix(parts.critic, group.name)
        for group in parts.structure.groups
    }


def check_finite(what: str, value: Tensor, state: LoopState, tau: float) -> None:
    """Stop with a clear message when a loss is NaN/inf (the last checkpoint on disk stays untouched)."""
    if not torch.isfinite(value):
        raise CompressionError(
            f"the {what} became {float(value.detach())} at iteration {state.iteration} (phase {state.phase}, "
            f"τ={tau:.3f}); expected a finite loss. {last_saved_state(state)} Lower critic.lr or compressor.lr, or "
            "check the data for NaN/inf values."
        )


def check_not_diverged(what: str, loss: float, state: LoopState, tau: float) -> None:
    """Stop where a cross-entropy explodes without becoming NaN, instead of finishing on a broken model."""
    if loss > DIVERGED_LOSS:
        raise CompressionError(
            f"compression diverged: the {what} is {loss:.3g} at iteration {state.iteration} (phase {state.phase}, "
            f"τ={tau:.3f}); expected a cross-entropy below {DIVERGED_LOSS:g} (chance level is ln(classes)). "
            f"{last_saved_state(state)} Lower critic.lr or compressor.lr and start over in a fresh output folder."
        )


def last_saved_state(state: LoopState) -> str:
    """Where a stopped run can be picked up: the last evaluation's state, written only when a run_dir was given."""
    if not state.history:
        return "No state was saved yet (the first one is written at the first evaluation)."
    last = state.history[-1]["iteration"]
    return (
        f"The last good state (iteration {last}) was written at the last evaluation, if a run_dir was given."
    )
