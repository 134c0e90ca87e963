"""The DeepIoT compressor-critic loop (DESIGN §2), then fine-tuning, physical slicing and a test of the result.

`compress_model(model, train, val, test, config)` runs, in order:
  1. compression: `compressor_critic_step` every iteration (critic step, compressor step, store
     probabilities); every `eval_every` iterations the current pruned structure (p ≥ τ kept, p < τ removed:
     hard 0/1 masks, exactly what is exported) is validated and the stop rules are checked: target met,
     kept set unchanged for `patience` evaluations once τ is at its limit ("converged"), or max iterations;
  2. slicing: the kept set is final (fitted to the budgets, see `deepiot.budget`); `slice_model` builds the
     physically smaller model, checked to compute exactly what the masked critic computes;
  3. fine-tuning: the sliced model trains with the shared recipe (`deepiot.finetune`: cosine learning rate,
     distillation from the original, best-validation weights); its test accuracy is measured.
With a `run_dir`, the loop state is written atomically to `<run_dir>/compress_state.pt` at every evaluation
and the fine-tuning state to `<run_dir>/finetune_state.pt`; rerunning the same call resumes from them (same
seed → same result as an uninterrupted run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from deepiot.budget import (
    BUDGET_COSTS,
    BUDGET_PRESSURES,
    BudgetController,
    LatencyProfile,
    attach_profile,
    budget_fractions,
    cost_ratios,
    fit_to_budget,
    kept_values,
    needs_latency,
)
from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.compressor import Compressor, CompressorConfig, MaskDistribution, score_variance
from deepiot.critic import Baseline, CriticConfig, Reward, build_baselines, structure_features
from deepiot.finetune import FinetuneConfig, FinetuneResult, distillation_loss, finetune
from deepiot.runtime import (
    BatchStream,
    CompressionError,
    accuracy,
    dataset_tensors,
    model_device,
    predict_logits,
    resolve_device,
)
from deepiot.schedules import ScheduleConfig, ThresholdSchedule, build_schedule
from deepiot.structure import MaskedNetwork, SlicingPlan, Structure, slice_model
from deepiot.utils import DIVERGED_LOSS, ConfigError, describe_differences

log = logging.getLogger(__name__)

STATE_FILE = "compress_state.pt"
FINETUNE_STATE_FILE = "finetune_state.pt"
MAGNITUDE_STATE_FILE = "magnitude_finetune_state.pt"  # compare_magnitude's fine-tuning
SLICED_TOLERANCE = 1e-4  # max |sliced − masked| logit difference accepted (float32 reassociation only)


@dataclass(frozen=True)
class LoopConfig:
    """Loop settings. Targets (budgets) are fractions of the original left (e.g. 0.07 = 7% of the parameters) or
    limits in device units: batch-1 latency in ms predicted by a device profile, serialised fp32 weights (flash)
    and peak activation memory (RAM) in KiB (see `deepiot.budget`).

    Stop rule (checked every `eval_every` iterations): every set target met and validation accuracy ≥ the
    floor, where the floor is the higher of `min_val_accuracy` and original − `max_accuracy_drop` (unset parts
    are ignored); or the kept set unchanged for `patience` evaluations once τ is at its limit; or
    `max_iterations`. Then the sliced model is fine-tuned (`CompressionConfig.finetune`).
    """

    max_iterations: int = 2000
    batch_size: int = 64
    eval_every: int = 200
    target_params: float | None = None
    target_macs: float | None = None
    target_latency_ms: float | None = None  # needs CompressionConfig.latency_profile
    target_model_kb: float | None = None
    target_peak_activation_kb: float | None = None
    min_val_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    patience: int = 5
    warmup_iterations: int = 0  # Algorithm 1, phase 1: compressor-only iterations, critic frozen, τ = 0
    budget_lr: float = 0.05  # dual-ascent step of the budget prices λ (0: fixed λ = 0, targets only stop)
    budget_pressure: str = "elasticity"  # "elasticity" | "marginal" (see deepiot.budget.BudgetController)
    fit_to_budget: bool = True
    # after the run, also fine-tune the L1-magnitude choice at the same per-group counts (same recipe, same
    # steps) and report both: how the search compares with the simplest baseline at the same size
    compare_magnitude: bool = False  # after the search, fit the kept set to the targets by keep probability
    eval_batch_size: int = 512
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup_iterations", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"compress.{name} must be an integer, got {getattr(self, name)!r}.")
        for name in (
            "max_iterations",
            "batch_size",
            "eval_every",
            "patience",
            "eval_batch_size",
            "log_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"compress.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.warmup_iterations < 0 or not self.budget_lr >= 0:
            raise ValueError(
                f"compress.warmup_iterations and compress.budget_lr must be >= 0, got {self.warmup_iterations} "
                f"and {self.budget_lr}."
            )
        if self.budget_pressure not in BUDGET_PRESSURES:
            raise ValueError(
                f"compress.budget_pressure must be one of {BUDGET_PRESSURES}, got {self.budget_pressure!r}."
            )
        if self.seed < 0:
            raise ValueError(f"compress.seed must be >= 0, got {self.seed}.")
        for name in ("target_params", "target_macs"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(
                    f"compress.{name} is a fraction of the original left and must be in (0, 1], got {value}."
                )
        for name in ("target_latency_ms", "target_model_kb", "target_peak_activation_kb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"compress.{name} is a limit in device units and must be > 0, got {value}.")
        for name in ("min_val_accuracy", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"compress.{name} must be in [0, 1], got {value}.")


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that decides what a compression computes (compared before resuming a run)."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    latency_profile: LatencyProfile = field(default_factory=LatencyProfile)  # prices `latency`

    def latency_needed_by(self) -> str | None:
        """The setting that needs predicted latency (a latency budget or cost=latency), or None."""
        return needs_latency(self.critic.cost, asdict(self.loop))

    def check_latency_profile(self) -> None:
        """BudgetError now, before any work, when latency is needed and the profile is missing or made for
        another runtime or thread count."""
        needed_by = self.latency_needed_by()
        if needed_by is not None:
            self.latency_profile.load(needed_by)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (tuples as lists), as stored in the checkpoint."""
        return json.loads(json.dumps(asdict(self)))


class CompressionResult(NamedTuple):
    """What a compression hands back: the physically smaller model, its slicing plan and the report."""

    sliced_model: nn.Module
    plan: SlicingPlan
    report: dict[str, Any]


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
    """One DeepIoT iteration (DESIGN §2, steps 1–3), at threshold τ of the current iteration.

    During the warm-up (Algorithm 1, phase 1: the first `warmup_iterations`) step 1 is skipped: the critic is
    frozen, τ stays 0 and the budget prices stay where they are; only the compressor learns.
    """
    warming_up = state.iteration < parts.config.loop.warmup_iterations
    tau = threshold(parts, state.iteration)
    decay = parts.config.schedule.decay
    batch_size = parts.config.loop.batch_size

    # 1. Critic step: masks from the stored, threshold-decayed keep probabilities (p < τ → γ·p); one optimizer
    #    step of the critic (the model, through its masks) on the task loss (optionally distilled from the
    #    original's logits).
    critic_loss = torch.tensor(math.nan, device=parts.device)
    if not warming_up:
        indices = parts.batches.next_indices()
        inputs, labels = parts.batches.inputs[indices], parts.batches.labels[indices]
        masks = MaskDistribution(state.keep_logits, tau, decay).sample(batch_size, parts.mask_generator)
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
    # the learned critic depends on z, so its correction term keeps the estimate unbiased (0 for the EMA)
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


# ---------------------------------------------------------------------------------------------- the loop


def compress_model(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    test_data: Dataset,
    config: CompressionConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    structure: Structure | None = None,
    model_config: Mapping[str, Any] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> CompressionResult:
    """Compress `model` (a trained classifier) with DeepIoT; `model` itself is left untouched.

    Args:
        model: trained classifier whose output is logits [N, classes].
        train_data, val_data, test_data: (input, label) datasets (TensorDataset or any indexable dataset).
        config: loop/compressor/critic/schedule settings (defaults: the paper's).
        run_dir: where the resumable state and TensorBoard events go; None keeps everything in memory.
        structure: the model's groups, when `Structure.from_model` needs declared groups.
        model_config: how to rebuild the model (`_target_`, input_shape, ...), stored in the slicing plan.
        progress: show a tqdm progress bar.
        device: where the loop runs ("auto", "cpu", "cuda:1", ...; see `runtime.resolve_device`); None: the
            model's device. The sliced model comes back on it; a run resumes only on the device it started on.

    Returns:
        CompressionResult(sliced_model, plan, report) where report holds the loop's history, stop reason,
        kept elements, modelled cost ratios, accuracies (original and compressed) and wall times.
    """
    config = config or CompressionConfig()
    config.check_latency_profile()
    device = model_device(model) if device is None else resolve_device(device)
    train_inputs, train_labels = (t.to(device) for t in dataset_tensors(train_data, "train"))
    val_inputs, val_labels = (t.to(device) for t in dataset_tensors(val_data, "val"))
    test_inputs, test_labels = (t.to(device) for t in dataset_tensors(test_data, "test"))
    if len(train_labels) < config.loop.batch_size:
        raise ConfigError(
            f"the training set has {len(train_labels)} samples, fewer than one batch (compress.batch_size="
            f"{config.loop.batch_size}); use more data or a smaller batch size."
        )
    critic = copy.deepcopy(model).to(device)
    original = model if model_device(model) == device else copy.deepcopy(model).to(device)
    structure = structure or Structure.from_model(critic, train_inputs[:1])
    if not structure.groups:
        raise ValueError(
            f"{type(model).__name__} has no compressible group (Linear/Conv/LSTM/GRU hidden elements other than "
            "the output layer); there is nothing to compress."
        )
    state_path = Path(run_dir) / STATE_FILE if run_dir is not None else None
    saved = read_saved_state(state_path, config) if state_path is not None else None
    parts = build_parts(critic, structure, (train_inputs, train_labels), config, device)
    if saved is not None:
        state = restore(parts, saved)
        log.info(
            "resuming compression from %s (phase %s, iteration %d)", state_path, state.phase, state.iteration
        )
    else:
        state = fresh_state(parts)
        state.original = {
            "val_accuracy": accuracy(original, val_inputs, val_labels, config.loop.eval_batch_size),
            "test_accuracy": accuracy(original, test_inputs, test_labels, config.loop.eval_batch_size),
        }
    writer = SummaryWriter(Path(run_dir) / "tensorboard", purge_step=state.iteration) if run_dir else None
    if writer is not None and saved is None:
        writer.add_text("hyperparameters", hyperparameter_table(config.to_dict()))
    validation = (val_inputs, val_labels)
    if state.phase == "compress":
        run_compression(parts, state, validation, writer, state_path, progress)
    check_inputs = test_inputs[: config.loop.eval_batch_size]
    sliced, difference = slice_checked(parts.critic, parts.structure, state.kept, check_inputs)
    started = time.perf_counter()
    tuned = finetune(
        sliced,
        (train_inputs, train_labels),
        validation,
        config.finetune,
        teacher=original if config.finetune.distill_weight > 0 else None,
        state_path=Path(run_dir) / FINETUNE_STATE_FILE if run_dir is not None else None,
        progress=progress,
    )
    state.wall_time_s["finetune"] = state.wall_time_s.get("finetune", 0.0) + time.perf_counter() - started
    result = compression_result(
        parts, state, tuned, difference, (test_inputs, test_labels), model_config or {}
    )
    if config.loop.compare_magnitude:
        splits = ((train_inputs, train_labels), validation, (test_inputs, test_labels))
        result.report["magnitude_at_same_counts"] = magnitude_reference(
            original, structure, state.kept, splits, config, run_dir, search_steps=state.iteration
        )
    if writer is not None:
        log_finetuning(writer, tuned.history, state.iteration)
        writer.add_scalar(
            "charts/test_accuracy", result.report["accuracy"]["compressed_test"], state.iteration
        )
        writer.close()
    return result


def run_compression(
    parts: LoopParts,
    state: LoopState,
    validation: tuple[Tensor, Tensor],
    writer: SummaryWriter | None,
    state_path: Path | None,
    progress: bool,
) -> None:
    """Compressor-critic iterations with periodic evaluation, checkpointing and the stop rules."""
    loop = parts.config.loop
    bar = tqdm(total=loop.max_iterations, initial=state.iteration, desc="compress", disable=not progress)
    started = time.perf_counter()
    session = (state.iteration, started)  # for the ETA of the progress lines
    while state.phase == "compress":
        next_iteration = state.iteration + 1
        evaluating = next_iteration % loop.eval_every == 0 or next_iteration == loop.max_iterations
        stats = compressor_critic_step(parts, state, measure_variance=evaluating)
        state.iteration = next_iteration
        check_not_diverged("critic loss", stats.critic_loss, state, stats.tau)
        bar.update(1)
        if writer is not None and (state.iteration % loop.log_every == 0 or evaluating):
            log_step(writer, stats, state.iteration)
        if evaluating:
            record = evaluate_and_decide(parts, state, validation, stats)
            state.wall_time_s["compress"] += time.perf_counter() - started
            started = time.perf_counter()
            bar.set_postfix(
                tau=f"{record['tau']:.3f}",
                kept=f"{100 * record['params_ratio']:.1f}%",
                val_acc=f"{record['val_accuracy']:.4f}",
            )
            if writer is not None:
                log_evaluation(writer, parts, state, record)
            if state_path is not None:
                save_checkpoint(state_payload(parts, state), state_path)
            if not progress:  # no bar (a file, a pipe, CI): one line per evaluation instead
                log.info(progress_line(loop, state, record, session))
    bar.close()


def progress_line(
    loop: LoopConfig, state: LoopState, record: Mapping[str, float], session: tuple[int, float]
) -> str:
    """ "iteration 300/2000  τ 0.049  val_accuracy 0.9812  params left 81.2%  MACs left 90.0%  elapsed 41 s  ETA ≤ 230 s"."""
    first_iteration, session_start = session
    seconds = time.perf_counter() - session_start
    per_iteration = seconds / max(1, state.iteration - first_iteration)
    eta = per_iteration * (loop.max_iterations - state.iteration)
    device_ratios = "".join(
        f"{cost.replace('_', ' ')} left {100 * record[f'{cost}_ratio']:.1f}%  "
        for cost in ("latency", "model_bytes", "activation_bytes")
        if f"{cost}_ratio" in record
    )
    return (
        f"iteration {state.iteration}/{loop.max_iterations}  τ {record['tau']:.3f}  "
        f"val_accuracy {record['val_accuracy']:.4f}  params left {100 * record['params_ratio']:.1f}%  "
        f"MACs left {100 * record['macs_ratio']:.1f}%  {device_ratios}elapsed {state.wall_time_s['compress']:.0f} s  "
        f"ETA ≤ {eta:.0f} s (+ fine-tuning)"
    )


def evaluate_and_decide(
    parts: LoopParts, state: LoopState, validation: tuple[Tensor, Tensor], stats: StepStats
) -> dict[str, float]:
    """Validate the current pruned structure, append it to the history and apply the stop rules."""
    loop = parts.config.loop
    tau = stats.tau
    kept = kept_indices(state.keep_logits, tau)
    val_accuracy = accuracy(
        parts.network, *validation, loop.eval_batch_size, parts.structure.masks_from_kept(kept, parts.device)
    )
    ratios = {
        **ratio_record(parts.structure, kept),
        **{
            f"{cost}_ratio": ratio
            for cost, ratio in cost_ratios(parts.structure, kept, parts.budget.budgets).items()
        },
    }
    record = {
        "iteration": state.iteration,
        "tau": tau,
        "val_accuracy": val_accuracy,
        **ratios,
        "kept_elements": sum(len(indices) for indices in kept.values()),
        "critic_loss": stats.critic_loss,
        "reward_mean": stats.reward_mean,
        **{f"grad_var_{name}": value for name, value in stats.grad_var.items()},
    }
    state.history.append(record)
    parts.schedule.observe(
        schedule_iteration(parts, state.iteration), val_accuracy, state.original["val_accuracy"]
    )
    state.unchanged_evaluations = state.unchanged_evaluations + 1 if kept == state.kept else 0
    state.kept = kept
    reason = stop_reason(parts, state, record)
    if reason:
        state.stop_reason, state.phase = reason, "finetune"
        log.info("compression stops at iteration %d: %s", state.iteration, reason)
        state.kept = final_kept_set(parts, state)
    return record


def final_kept_set(parts: LoopParts, state: LoopState) -> dict[str, list[int]]:
    """The search's kept set, fitted to the budgets by keep probability when there are budgets to fit."""
    budgets = parts.budget.budgets
    if not budgets or not parts.config.loop.fit_to_budget:
        return state.kept
    # ranked element by element on the host: one copy instead of a device sync per element
    probs = {name: torch.sigmoid(logits).cpu() for name, logits in state.keep_logits.items()}
    fitted = fit_to_budget(parts.structure, state.kept, probs, budgets)
    before, after = (cost_ratios(parts.structure, kept, budgets) for kept in (state.kept, fitted))
    log.info(
        "kept set fitted to the budget: %s",
        ", ".join(
            f"{name} {before[name]:.2%} → {after[name]:.2%} (budget {budgets[name]:.2%})" for name in budgets
        ),
    )
    return fitted


def stop_reason(parts: LoopParts, state: LoopState, record: Mapping[str, float]) -> str:
    """Why compression stops now ("" to go on): target met, converged, or out of iterations."""
    loop = parts.config.loop
    size_targets = {f"{cost}_ratio": fraction for cost, fraction in parts.budget.budgets.items()}
    accurate = record["val_accuracy"] >= accuracy_floor(loop, state.original["val_accuracy"])
    if size_targets and accurate and all(record[key] <= value for key, value in size_targets.items()):
        return "target met: " + ", ".join(
            f"{key} {record[key]:.4f} <= {value}" for key, value in size_targets.items()
        )
    if state.unchanged_evaluations >= loop.patience and parts.schedule.at_limit(
        schedule_iteration(parts, state.iteration)
    ):
        return f"converged: kept set unchanged for {state.unchanged_evaluations} evaluations"
    if state.iteration >= loop.max_iterations:
        return f"max iterations ({loop.max_iterations}) reached"
    return ""


def accuracy_floor(loop: LoopConfig, original_val_accuracy: float) -> float:
    """The validation accuracy the target requires (0 when no floor is configured)."""
    floors = [0.0]
    if loop.min_val_accuracy is not None:
        floors.append(loop.min_val_accuracy)
    if loop.max_accuracy_drop is not None:
        floors.append(original_val_accuracy - loop.max_accuracy_drop)
    return max(floors)


def slice_checked(
    model: nn.Module, structure: Structure, kept: Mapping[str, list[int]], check_inputs: Tensor
) -> tuple[nn.Module, float]:
    """`model` sliced to `kept`, checked on `check_inputs` to compute what the hard-masked model computes
    (returns the sliced model and the largest logit difference seen). Used by DeepIoT and the baselines."""
    model.eval()
    sliced = slice_model(model, structure, kept).eval()
    with torch.no_grad():
        masks = structure.masks_from_kept(kept, check_inputs.device)
        masked_logits = MaskedNetwork(model, structure).eval()(check_inputs, masks)
        sliced_logits = sliced(check_inputs)
    difference = float((masked_logits - sliced_logits).abs().max())
    if not difference <= SLICED_TOLERANCE * max(1.0, float(masked_logits.abs().max())):
        raise CompressionError(
            f"the sliced model's outputs differ from the masked network's by up to {difference:.3g} (tolerance "
            f"{SLICED_TOLERANCE}); the slicing of {type(model).__name__} is wrong — please report it."
        )
    return sliced, difference


def magnitude_reference(
    model: nn.Module,
    structure: Structure,
    kept: Mapping[str, list[int]],
    splits: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    config: CompressionConfig,
    run_dir: str | Path | None,
    search_steps: int,
) -> dict[str, Any]:
    """The largest-L1 elements at the same per-group counts, sliced from the original and fine-tuned with the
    same recipe for as many steps as the critic trained in all (`search_steps` + fine-tuning):
    {"kept_counts", "finetune_steps", "val_accuracy", "test_accuracy", "wall_time_s"}."""
    started = time.perf_counter()
    counts = {name: len(indices) for name, indices in kept.items()}
    chosen = {name: structure.largest_l1_elements(model, name, count) for name, count in counts.items()}
    sliced = slice_model(copy.deepcopy(model).eval(), structure, chosen).eval()
    train, validation, test = splits
    recipe = dataclasses.replace(config.finetune, steps=config.finetune.steps + search_steps)
    tuned = finetune(
        sliced,
        train,
        validation,
        recipe,
        teacher=model if config.finetune.distill_weight > 0 else None,
        state_path=Path(run_dir) / MAGNITUDE_STATE_FILE if run_dir is not None else None,
    )
    return {
        "kept_counts": counts,
        "finetune_steps": recipe.steps,
        "val_accuracy": tuned.best_val_accuracy,
        "test_accuracy": accuracy(tuned.model, *test, config.loop.eval_batch_size),
        "wall_time_s": time.perf_counter() - started,
    }


def compression_result(
    parts: LoopParts,
    state: LoopState,
    tuned: FinetuneResult,
    difference: float,
    test: tuple[Tensor, Tensor],
    model_config: Mapping[str, Any],
) -> CompressionResult:
    """The fine-tuned sliced model, its slicing plan and the report of the whole run."""
    plan = SlicingPlan(
        model_config=dict(model_config),
        kept={name: list(indices) for name, indices in state.kept.items()},
        group_sizes={group.name: group.size for group in parts.structure.groups},
    )
    report = {
        "stop_reason": state.stop_reason,
        "iterations": state.iteration,
        "finetune_iterations": parts.config.finetune.steps,
        "group_sizes": plan.group_sizes,
        "kept_counts": {name: len(indices) for name, indices in state.kept.items()},
        "kept": plan.kept,
        **{"modelled_" + key: value for key, value in ratio_record(parts.structure, state.kept).items()},
        "budgets": budget_record(parts, state.kept),
        "accuracy": {
            "original_val": state.original["val_accuracy"],
            "original_test": state.original["test_accuracy"],
            "compressed_val": tuned.best_val_accuracy,
            "compressed_test": accuracy(tuned.model, *test, parts.config.loop.eval_batch_size),
        },
        "sliced_vs_masked_max_abs_diff": difference,
        "wall_time_s": dict(state.wall_time_s),
        "history": state.history,
        "finetune_history": tuned.history,
    }
    return CompressionResult(tuned.model, plan, report)


def budget_record(parts: LoopParts, kept: Mapping[str, list[int]]) -> dict[str, Any]:
    """Every budget of the run (its setting, the fraction of the original it allows, the result's fraction) and
    the original's and the result's latency (predicted, when a profile is attached), model and peak activation
    KiB, so a budget in device units can be checked against what the run kept."""
    loop = asdict(parts.config.loop)
    everything = {group.name: range(group.size) for group in parts.structure.groups}
    budgets = {}
    for key, (cost, unit, _) in BUDGET_COSTS.items():
        if loop.get(key) is not None:
            result = cost_ratios(parts.structure, kept, [cost])[cost]
            budgets[key] = {"cost": cost, "value": loop[key], "unit": unit or "fraction of the original",
                            "fraction": parts.budget.budgets[cost], "result_fraction": result}  # fmt: skip
    return {
        "targets": budgets,
        "original": kept_values(parts.structure, everything),
        "compressed": kept_values(parts.structure, kept),
        "latency_profile": parts.config.latency_profile.profile if parts.config.latency_needed_by() else None,
    }


# ---------------------------------------------------------------------------------------------- helpers


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


def kept_indices(keep_logits: Mapping[str, Tensor], tau: float) -> dict[str, list[int]]:
    """Elements with p ≥ τ per group; a group never loses its most probable element (a layer of width 0
    would cut the network)."""
    kept = {}
    for name, logits in keep_logits.items():
        indices = (torch.sigmoid(logits) >= tau).nonzero().flatten().tolist()
        kept[name] = indices or [int(logits.argmax())]
    return kept


def ratio_record(structure: Structure, kept: Mapping[str, list[int]]) -> dict[str, float]:
    """Parameters and MACs left, as fractions of the original ({'params_ratio': …, 'macs_ratio': …})."""
    ratios = cost_ratios(structure, kept)
    return {f"{name}_ratio": ratios[name] for name in ("params", "macs")}


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


def hyperparameter_table(config: Mapping[str, Any]) -> str:
    """Markdown table of every setting, logged once (CleanRL style)."""
    rows = [
        f"|{section}.{key}|{value}|" for section, values in config.items() for key, value in values.items()
    ]
    return "|setting|value|\n|-|-|\n" + "\n".join(rows)


def log_step(writer: SummaryWriter, stats: StepStats, step: int) -> None:
    writer.add_scalar("losses/critic", stats.critic_loss, step)
    writer.add_scalar("losses/compressor", stats.compressor_loss, step)
    writer.add_scalar("compressor/reward_mean", stats.reward_mean, step)
    writer.add_scalar("compressor/baseline", stats.baseline, step)
    writer.add_scalar("compressor/advantage_var", stats.advantage_var, step)
    writer.add_scalar("compressor/entropy", stats.entropy, step)
    writer.add_scalar("schedule/tau", stats.tau, step)
    for name, price in stats.prices.items():
        writer.add_scalar(f"budget/lambda_{name}", price, step)
        writer.add_scalar(f"budget/expected_{name}_ratio", stats.expected_cost[name], step)
    for name, value in stats.grad_var.items():
        writer.add_scalar(f"compressor/grad_var_{name}", value, step)


def log_finetuning(writer: SummaryWriter, history: list[dict[str, float]], offset: int) -> None:
    """The fine-tuning evaluations, on the step axis after the search's last iteration."""
    for record in history:
        step = offset + int(record["step"])
        writer.add_scalar("charts/finetune_val_accuracy", record["val_accuracy"], step)
        if "train_loss" in record:
            writer.add_scalar("losses/finetune", record["train_loss"], step)


def log_evaluation(
    writer: SummaryWriter, parts: LoopParts, state: LoopState, record: Mapping[str, float]
) -> None:
    step = state.iteration
    writer.add_scalar("charts/val_accuracy", record["val_accuracy"], step)
    writer.add_scalar("cost/params_ratio", record["params_ratio"], step)
    writer.add_scalar("cost/macs_ratio", record["macs_ratio"], step)
    active = f"grad_var_{parts.config.critic.baseline}"
    if active in record:
        writer.add_scalar("compressor/grad_var", record[active], step)
    for group in parts.structure.groups:
        writer.add_scalar(f"structure/kept/{group.name}", len(state.kept[group.name]) / group.size, step)
        writer.add_histogram(f"keep_prob/{group.name}", torch.sigmoid(state.keep_logits[group.name]), step)


# ---------------------------------------------------------------------------------------------- save / resume


def state_payload(parts: LoopParts, state: LoopState) -> dict[str, Any]:
    """The whole loop as a "compression_state" checkpoint (tensors and plain containers only)."""
    return {
        "kind": "compression_state",
        "config": parts.config.to_dict(),
        "state_dict": parts.critic.state_dict(),
        "compressor": parts.compressor.state_dict(),
        "critic_optimizer": parts.critic_optimizer.state_dict(),
        "compressor_optimizer": parts.compressor_optimizer.state_dict(),
        "baselines": {name: baseline.state_dict() for name, baseline in parts.baselines.items()},
        "budget": parts.budget.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "batches": parts.batches.state_dict(),
        "mask_generator": parts.mask_generator.get_state(),
        "device": parts.device.type,  # the mask stream's generator state fits only this device type
        "loop": asdict(state),
        "metrics": {key: float(value) for key, value in (state.history[-1] if state.history else {}).items()},
    }


def read_saved_state(path: Path, config: CompressionConfig) -> dict[str, Any] | None:
    """The saved loop state at `path`, if any; ConfigError when it was written with another config."""
    if not path.is_file():
        return None
    saved = load_checkpoint(path, kind="compression_state")
    if saved["config"] != config.to_dict():
        raise ConfigError(
            f"cannot resume from {path}: it was written with another compression config "
            f"({describe_differences(saved['config'], config.to_dict())}). Expected the same settings as the run "
            "that wrote it: use another output folder (name=... or hydra.run.dir=...) or delete that folder."
        )
    return saved


def restore(parts: LoopParts, saved: Mapping[str, Any]) -> LoopState:
    """Load every part's state from a checkpoint; returns the loop state it recorded."""
    saved_device = saved.get("device", "cpu")
    if saved_device != parts.device.type:
        raise ValueError(
            f"cannot resume on {parts.device}: this compression state was written on a {saved_device} device "
            "(random streams differ per device). Resume it with device=" + saved_device + ", or use another "
            "output folder."
        )
    parts.critic.load_state_dict(saved["state_dict"])
    parts.compressor.load_state_dict(saved["compressor"])
    parts.critic_optimizer.load_state_dict(saved["critic_optimizer"])
    parts.compressor_optimizer.load_state_dict(saved["compressor_optimizer"])
    for name, baseline in parts.baselines.items():
        baseline.load_state_dict(saved["baselines"][name])
    parts.budget.load_state_dict(saved["budget"])
    parts.schedule.load_state_dict(saved["schedule"])
    parts.batches.load_state_dict(saved["batches"])
    parts.mask_generator.set_state(saved["mask_generator"])
    state = LoopState(**saved["loop"])
    state.keep_logits = {name: logits.to(parts.device) for name, logits in state.keep_logits.items()}
    return state
