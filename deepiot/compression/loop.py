"""The DeepIoT compressor-critic loop (docs/design.md §2), then fine-tuning, physical slicing and a test of the result.

`compress_model(model, train, val, test, config)` runs, in order (the phases compress → finetune):
  1. compression: `compressor_critic_step` (`deepiot.compression.step`) every iteration; every `eval_every`
     iterations the current pruned structure (p ≥ τ kept, p < τ removed: hard 0/1 masks, exactly what is
     exported) is validated and the stop rules are checked: target met, kept set unchanged for `patience`
     evaluations once τ is at its limit ("converged"), or max iterations;
  2. slicing: the kept set is final (fitted to the budgets, see `deepiot.compression.budget`); `slice_model`
     builds the physically smaller model, checked to compute exactly what the masked critic computes;
  3. fine-tuning: the sliced model trains with the shared recipe (`deepiot.finetune`: cosine learning rate,
     distillation from the original, best-validation weights); its test accuracy is measured.
With a `run_dir`, the loop state (`deepiot.compression.state`) is written atomically to
`<run_dir>/compress_state.pt` at every evaluation and the fine-tuning state to `<run_dir>/finetune_state.pt`;
rerunning the same call resumes from them (same seed → same result as an uninterrupted run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from deepiot.checkpoint import save_checkpoint
from deepiot.compression.budget import BUDGET_COSTS, cost_ratios, fit_to_budget, kept_values
from deepiot.compression.config import CompressionConfig, LoopConfig
from deepiot.compression.state import (
    FINETUNE_STATE_FILE,
    MAGNITUDE_STATE_FILE,
    SCRATCH_STATE_FILE,
    STATE_FILE,
    read_saved_state,
    restore,
    state_payload,
)
from deepiot.compression.step import (
    LoopParts,
    LoopState,
    StepStats,
    build_parts,
    check_not_diverged,
    compressor_critic_step,
    fresh_state,
    schedule_iteration,
)
from deepiot.finetune import FinetuneConfig, FinetuneResult, finetune
from deepiot.runtime import (
    CompressionError,
    accuracy,
    check_reinitialisable,
    dataset_tensors,
    hyperparameter_table,
    model_device,
    reinitialised,
    resolve_device,
)
from deepiot.structure import MaskedNetwork, SlicingPlan, Structure, slice_model
from deepiot.utils import ConfigError, atomic_write, flatten

log = logging.getLogger(__name__)

CHOICE_FILE = "element_choice.json"  # which candidate fine-tuning started from (see choose_elements)
SLICED_TOLERANCE = 1e-4  # max |sliced − masked| logit difference accepted (float32 reassociation only)


class CompressionResult(NamedTuple):
    """What a compression hands back: the physically smaller model, its slicing plan and the report."""

    sliced_model: nn.Module
    plan: SlicingPlan
    report: dict[str, Any]


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
    if config.loop.try_scratch:
        check_reinitialisable(critic)  # before the search, not after it
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
        writer.add_text("hyperparameters", hyperparameter_table(flatten(config.to_dict())))
    validation = (val_inputs, val_labels)
    if state.phase == "compress":
        run_compression(parts, state, validation, writer, state_path, progress)
    check_inputs = test_inputs[: config.loop.eval_batch_size]
    started = time.perf_counter()
    choice = choose_elements(
        parts, state, original, ((train_inputs, train_labels), validation), run_dir, check_inputs
    )
    state.kept = choice.kept
    sliced, difference = slice_checked(choice.source, parts.structure, state.kept, check_inputs)
    tuned = finetune(
        sliced,
        (train_inputs, train_labels),
        validation,
        config.finetune,
        teacher=original if config.finetune.distill_weight > 0 else None,
        state_path=Path(run_dir) / FINETUNE_STATE_FILE if run_dir is not None else None,
        progress=progress,
    )
    record = dict(choice.record)
    if config.loop.try_scratch:
        tuned, record["scratch"] = scratch_alternative(
            sliced, tuned, original if config.finetune.distill_weight > 0 else None,
            ((train_inputs, train_labels), validation), config.finetune, config.loop.seed,
            Path(run_dir) / SCRATCH_STATE_FILE if run_dir is not None else None, progress,
        )  # fmt: skip
    state.wall_time_s["finetune"] = state.wall_time_s.get("finetune", 0.0) + time.perf_counter() - started
    result = compression_result(
        parts, state, tuned, difference, (test_inputs, test_labels), model_config or {}
    )
    result.report["element_choice"] = record
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
    """The search's kept set, raised to `compress.min_kept` per group and fitted to the budgets by keep
    probability (`budget.fit_to_budget`)."""
    budgets, loop = parts.budget.budgets, parts.config.loop
    if not (budgets and loop.fit_to_budget) and loop.min_kept <= 1:
        return state.kept
    # ranked element by element on the host: one copy instead of a device sync per element
    probs = {name: torch.sigmoid(logits).cpu() for name, logits in state.keep_logits.items()}
    fitted = fit_to_budget(
        parts.structure, state.kept, probs, budgets if loop.fit_to_budget else {}, loop.min_kept
    )
    before, after = (cost_ratios(parts.structure, kept, budgets) for kept in (state.kept, fitted))
    log.info(
        "kept set fitted to the budget%s: %s",
        f" with at least {loop.min_kept} elements a group" if loop.min_kept > 1 else "",
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


class ElementChoice(NamedTuple):
    """Which elements and weights the search hands to fine-tuning: the model to slice, its kept set, the record."""

    source: nn.Module
    kept: dict[str, list[int]]
    record: dict[str, Any]


def element_candidates(
    parts: LoopParts, state: LoopState, original: nn.Module
) -> dict[str, tuple[nn.Module, dict[str, list[int]]]]:
    """The searched allocation (kept count per group) filled three ways: {name: (model to slice, kept)}.

    critic: the compressor's kept elements with the critic's weights (trained under masks during the search);
    original: the same elements with the original's weights (rewinding: the search as a pure architecture and
    element search); l1: at the same counts, the original's largest-L1 elements and weights."""
    counts = {name: len(indices) for name, indices in state.kept.items()}
    largest = {
        name: parts.structure.largest_l1_elements(original, name, count) for name, count in counts.items()
    }
    return {
        "critic": (parts.critic, dict(state.kept)),
        "original": (original, dict(state.kept)),
        "l1": (original, largest),
    }


def choose_elements(
    parts: LoopParts,
    state: LoopState,
    original: nn.Module,
    splits: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    run_dir: str | Path | None,
    check_inputs: Tensor,
) -> ElementChoice:
    """`compress.element_choice`: one candidate of `element_candidates`, or "auto": each candidate sliced and
    fine-tuned for `compress.choice_steps` steps of the recipe, the best validation accuracy wins (ties: the
    order critic, original, l1). The choice is written to `<run_dir>/element_choice.json`, so a resumed run
    fine-tunes the same candidate without trying them again."""
    loop = parts.config.loop
    candidates = element_candidates(parts, state, original)
    saved_path = Path(run_dir) / CHOICE_FILE if run_dir is not None else None
    if saved_path is not None and saved_path.is_file():
        record = json.loads(saved_path.read_text())
    elif loop.element_choice != "auto":
        record = {"mode": loop.element_choice, "chosen": loop.element_choice}
    else:
        train, validation = splits
        trial = dataclasses.replace(parts.config.finetune, steps=loop.choice_steps,
                                    eval_every=min(parts.config.finetune.eval_every, loop.choice_steps))  # fmt: skip
        scores = {}
        for name, (source, kept) in candidates.items():
            sliced, _ = slice_checked(copy.deepcopy(source), parts.structure, kept, check_inputs)
            tuned = finetune(sliced, train, validation, trial,
                             teacher=original if trial.distill_weight > 0 else None)  # fmt: skip
            scores[name] = tuned.best_val_accuracy
        chosen = max(scores, key=lambda name: (scores[name], -list(candidates).index(name)))
        record = {"mode": "auto", "chosen": chosen, "trial_steps": loop.choice_steps, "val_accuracy": scores}
        log.info("element choice: %s (validation after %d steps: %s)", chosen, loop.choice_steps,
                 ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))  # fmt: skip
    if saved_path is not None:
        atomic_write(saved_path, lambda file: file.write(json.dumps(record, indent=2) + "\n"))
    source, kept = candidates[record["chosen"]]
    return ElementChoice(source, kept, record)


def scratch_alternative(
    sliced: nn.Module,
    tuned: FinetuneResult,
    teacher: nn.Module | None,
    splits: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    recipe: FinetuneConfig,
    seed: int,
    state_path: Path | None,
    progress: bool,
) -> tuple[FinetuneResult, dict[str, Any]]:
    """`try_scratch` (DeepIoT's `compress.try_scratch`, a structured baseline's `method.try_scratch`): the sliced
    architecture with every module re-initialised (`reinitialised`, seeded by `seed`) trained with the same
    recipe and teacher as `tuned` (the fine-tuned handed-on weights); the higher best-validation accuracy wins,
    a tie keeps the handed-on weights. Returns (the winner, {"chosen": "scratch" | "handed_on", "val_accuracy":
    {both}}). Resumable from `state_path`."""
    train, validation = splits
    fresh, _ = reinitialised(sliced, seed)
    scratch = finetune(
        fresh, train, validation, recipe, teacher=teacher, state_path=state_path, progress=progress
    )
    won = scratch.best_val_accuracy > tuned.best_val_accuracy
    record = {
        "chosen": "scratch" if won else "handed_on",
        "val_accuracy": {"handed_on": tuned.best_val_accuracy, "scratch": scratch.best_val_accuracy},
    }
    log.info("try_scratch: %s wins on validation (handed-on weights %.4f, from scratch %.4f)",
             record["chosen"], tuned.best_val_accuracy, scratch.best_val_accuracy)  # fmt: skip
    return (scratch if won else tuned), record


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
    loop = dataclasses.asdict(parts.config.loop)
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
