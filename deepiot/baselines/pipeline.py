"""`deepiot.baselines.prune(...)`: a baseline method end to end, with the same artefacts as `deepiot.compress`.

A structured method picks a kept set `{group: [indices]}`; then the shared path: kept set → `SlicingPlan` →
`slice_model` (checked against the masked network on real inputs) → `finetune` (the shared recipe) → test →
`build_report` (measured params/MACs/bytes/latency) → export (TorchScript, ONNX, manifest, plan) → report.

Structured methods (`METHODS`):
- magnitude: L1 of each element's weights, global ranking normalised per group (a group can collapse to 1);
- magnitude_floor: magnitude with a per-group floor (`selection.magnitude_floor_at_budget`, `floor=`);
- uniform: the same kept fraction in every group, the largest that meets the budget (`selection.uniform_at_budget`);
- random: random elements at magnitude_floor's counts at a budget (a control for the element choice);
- torch_pruning: Torch-Pruning's global group-magnitude pruner (a third-party reference);
- scratch: the architecture of another run (`plan=` its slicing_plan.json, or `counts=`), every module
  re-initialised (`reset_parameters()`, seeded by `seed`) and trained with the same shared recipe, distilled from
  the original — Liu et al. (ICLR 2019), "Rethinking the value of network pruning" (`scratch_choice`).
With `try_scratch=True` (config `method.try_scratch`) a method that hands on the original's weights also trains
its kept architecture from scratch with the same recipe and keeps the better on validation (`finish`), the
alternative DeepIoT gets from `compress.try_scratch`.
The unstructured methods (unstructured: global |w| ranking at once, the mask then fixed; unstructured_fair: LAMP's
ranking reached gradually during fine-tuning, `unstructured.GradualPruning`) mask weights instead: reported by
nonzero parameters, never sliced or exported as a smaller model (see `unstructured.SPARSE_NOTE`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor, nn
from torch.utils.data import Dataset

from deepiot.api import OutputOptions, save_outputs
from deepiot.baselines import reference, selection, unstructured
from deepiot.compression import CompressionResult, scratch_alternative, slice_checked
from deepiot.compression.budget import DEVICE_BUDGETS, LatencyProfile, attach_profile, budget_fractions
from deepiot.compression.state import SCRATCH_STATE_FILE
from deepiot.finetune import FinetuneConfig, FinetuneResult, finetune
from deepiot.report import build_report, write_report
from deepiot.runtime import accuracy, check_reinitialisable, dataset_tensors, reinitialised
from deepiot.structure import SlicingPlan, Structure

METHODS = (
    "magnitude",
    "magnitude_floor",
    "uniform",
    "random",
    "torch_pruning",
    "unstructured",
    "unstructured_fair",
    "scratch",
)
UNSTRUCTURED_METHODS = ("unstructured", "unstructured_fair")
# the methods whose fine-tuning starts from the original's (sliced) weights: try_scratch trains them from scratch too
SCRATCH_ALTERNATIVE_METHODS = ("magnitude", "magnitude_floor", "uniform", "random", "torch_pruning")
BUDGET_METHODS = ("magnitude_floor", "uniform")  # a budget only (no counts or fraction)
DEVICE_BUDGET_METHODS = ("magnitude", "magnitude_floor", "uniform", "random")
NEEDS_PLAN = ("scratch",)  # need another run's architecture: plan=<slicing_plan.json> (method.plan) or counts
FINETUNE_STATE = "finetune_state.pt"
FINETUNE_PLOT = "finetune.png"
SLICE_CHECK_SAMPLES = 512  # test inputs on which the sliced model must equal the masked one


def prune(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    test_data: Dataset | None = None,
    *,
    method: str = "magnitude",
    budget: float | None = None,
    cost: str = "params",
    counts: Mapping[str, int] | None = None,
    fraction: float | None = None,
    normalizer: str = "mean",
    floor: int | Mapping[str, int] | None = None,
    plan: SlicingPlan | str | os.PathLike[str] | None = None,
    profile: LatencyProfile | None = None,
    finetune_config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    seed: int = 0,
    try_scratch: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    example_inputs: Tensor | None = None,
    structure: Structure | None = None,
    outputs: OutputOptions | None = None,
    progress: bool = False,
) -> CompressionResult:
    """Compress `model` with a baseline method and fine-tune it with the shared recipe; `model` is untouched.

    Args:
        model: trained classifier returning logits [N, classes].
        train_data, val_data, test_data: (input, label) datasets; test defaults to val.
        method: "magnitude" (L1 of each element's weights), "magnitude_floor" (magnitude with a per-group
            floor), "uniform" (the same kept fraction per group), "random" (a control), "torch_pruning"
            (Torch-Pruning's global group-magnitude pruner; no recurrent layers), "scratch" (another run's
            architecture, re-initialised and trained with the shared recipe), "unstructured" (global weight
            magnitude) or "unstructured_fair" (gradual LAMP magnitude pruning while fine-tuning) — the unstructured
            two give a sparse model, not a smaller dense one.
        budget: fraction of the original `cost` left, in (0, 1] (magnitude: global ranking normalised per group;
            random: the per-group counts magnitude_floor picks at this budget; torch_pruning: its global ratio); for a
            cost in device units, the limit in that unit.
        cost: "params" or "macs" (fractions; unstructured: params only), or a budget in device units (magnitude
            and random): "latency_ms" (predicted by `profile`), "model_kb" (fp32 weights, KiB) or
            "peak_activation_kb" (largest layer input + output at batch 1, KiB).
        counts: kept elements per group (magnitude, random, scratch), instead of a budget (scratch: of a plan).
        fraction: kept fraction of every group (magnitude, random), instead of a budget.
        normalizer: magnitude's (and magnitude_floor's) per-group score normaliser for a budget, "mean" or "max".
        floor: magnitude_floor's least kept count per group: an int for every group (capped at its size), a
            {group: count} mapping, or None for `selection.default_floors` (uniform width at half the budget,
            raised towards the number of classes, the floors costing at most half the budget).
        plan: scratch's architecture: a `SlicingPlan` or the path of another run's slicing_plan.json (its kept
            counts are used, its weights are not); `budget` is then only recorded.
        profile: the device profile for cost="latency_ms" (see `deepiot.compression.budget.LatencyProfile`).
        finetune_config: the shared recipe (default `FinetuneConfig()`; `steps=0` skips fine-tuning).
        teacher: distillation teacher when `finetune_config.distill_weight > 0` (default: `model` itself).
        seed: random's seed, scratch's initialisation seed (and try_scratch's).
        try_scratch: the structured methods that hand on the original's weights (SCRATCH_ALTERNATIVE_METHODS) also
            train their architecture from scratch with the same recipe and keep whichever is better on
            validation — what `compress.try_scratch` does for DeepIoT, so both get the same alternatives.
        out_dir: with it, fine-tuning resumes on rerun and the folder receives report.json/md, plots,
            slicing_plan.json and export/ (structured methods).
        example_inputs, structure, outputs: as in `deepiot.compress`.

    Returns:
        CompressionResult(the fine-tuned smaller model — for unstructured the dense masked one —, plan, report).
    """
    if try_scratch and method not in SCRATCH_ALTERNATIVE_METHODS:
        raise ValueError(
            f"try_scratch applies to the methods that hand on the original's weights "
            f"({', '.join(SCRATCH_ALTERNATIVE_METHODS)}), not to {method!r}."
        )
    if try_scratch:
        check_reinitialisable(model)  # before any fine-tuning, not after the first one
    finetune_config = finetune_config or FinetuneConfig()
    splits = Splits.of(train_data, val_data, test_data)
    original = copy.deepcopy(model).cpu().eval()
    started = time.perf_counter()
    if method in UNSTRUCTURED_METHODS:
        choice, structure = unstructured_choice(original, budget, cost, method, finetune_config.steps), None
    elif method == "scratch":
        structure = structure or Structure.from_model(original, splits.train[0][:2])
        choice = scratch_choice(original, structure, splits, plan, counts, fraction, seed)
    else:
        structure = structure or Structure.from_model(original, splits.train[0][:2])
        fraction_budget, fraction_cost = budget, cost
        if cost in DEVICE_BUDGETS and budget is not None:
            fraction_cost, fraction_budget = device_budget(original, structure, method, budget, cost, profile)
        choice = structured_choice(
            original,
            structure,
            splits,
            method,
            fraction_budget,
            fraction_cost,
            counts,
            fraction,
            normalizer,
            seed,
            floor,
        )
    details = method_details(method, budget, cost, counts, fraction, normalizer, seed, floor, plan)
    return finish(
        original, choice, structure, splits, finetune_config,
        scratch_seed=seed if try_scratch else None,
        teacher=teacher, out_dir=out_dir, outputs=outputs, example_inputs=example_inputs,
        details={**details, **choice.details}, select_seconds=time.perf_counter() - started, progress=progress,
    )  # fmt: skip


class Splits(NamedTuple):
    """(inputs, labels) tensors of the three splits."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

    @classmethod
    def of(cls, train_data: Dataset, val_data: Dataset, test_data: Dataset | None) -> Splits:
        """Tensors of the datasets; the test split defaults to the validation split."""
        return cls(
            dataset_tensors(train_data, "train"),
            dataset_tensors(val_data, "val"),
            dataset_tensors(val_data if test_data is None else test_data, "test"),
        )


class Choice(NamedTuple):
    """What a method hands to the shared path."""

    start: nn.Module  # the model fine-tuning starts from: the sliced model (unstructured: the original)
    kept: dict[str, list[int]] | None  # the kept set (None for unstructured)
    weight_masks: dict[str, Tensor] | None  # weights held at 0 while fine-tuning (unstructured)
    details: dict[str, Any]  # report entries describing the choice
    pruning: unstructured.GradualPruning | None = None  # unstructured_fair: masks on a schedule instead


def finish(
    original: nn.Module,
    choice: Choice,
    structure: Structure | None,
    splits: Splits,
    recipe: FinetuneConfig,
    *,
    scratch_seed: int | None = None,
    teacher: nn.Module | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    outputs: OutputOptions | None = None,
    example_inputs: Tensor | None = None,
    details: Mapping[str, Any] | None = None,
    select_seconds: float = 0.0,
    progress: bool = False,
) -> CompressionResult:
    """The shared path after a method's choice: fine-tune (shared recipe) → test → measured report → export.

    Used by every baseline and by DeepIoT in scripts/reproduce.py, so all methods are measured alike. With
    `scratch_seed` (a structured method's try_scratch) the sliced architecture is also trained from scratch,
    initialised with that seed, and the better of the two on validation is kept (report "element_choice").
    """
    outputs = outputs or OutputOptions()
    example_inputs = splits.train[0][:1] if example_inputs is None else example_inputs
    if recipe.distill_weight > 0 and teacher is None:
        teacher = original
    started = time.perf_counter()
    gradual = choice.pruning is not None and recipe.steps > 0  # else the final masks at once
    tuned = finetune(
        choice.start, splits.train, splits.val, recipe, teacher=teacher,
        weight_masks=None if gradual else choice.weight_masks, pruning=choice.pruning if gradual else None,
        state_path=Path(out_dir) / FINETUNE_STATE if out_dir is not None else None, progress=progress,
    )  # fmt: skip
    if scratch_seed is not None:
        tuned, record = scratch_alternative(
            choice.start, tuned, teacher, (splits.train, splits.val), recipe,
            scratch_seed, Path(out_dir) / SCRATCH_STATE_FILE if out_dir is not None else None, progress,
        )  # fmt: skip
        details = {**(details or {}), "element_choice": {"scratch": record}}
    if gradual:  # report the masks the schedule ended with
        details = {**(details or {}), "unstructured": unstructured_details(
            choice.start, unstructured.GradualPruning.masks_of(tuned.model), "LAMP, gradual")}  # fmt: skip
    wall_time_s = {"select": select_seconds, "finetune": time.perf_counter() - started}
    loop_report = method_report(original, tuned, structure, choice.kept, splits, recipe, wall_time_s)
    report = build_report(
        original, tuned.model, loop_report, example_inputs,
        latency_threads=outputs.latency_threads, extra=outputs.report_extra,
    )  # fmt: skip
    report.update(details or {})
    report["finetune"] = asdict(recipe)
    report["finetune_history"] = tuned.history
    if "unstructured" in report:
        report["cost"]["nonzero_params"] = report["unstructured"]["nonzero_params"]
        report["cost"]["left"]["nonzero_params"] = report["unstructured"]["nonzero_fraction"]
    plan = None
    if choice.kept is not None and structure is not None:
        plan = SlicingPlan.from_structure(structure, dict(outputs.model_config), choice.kept)
    result = CompressionResult(tuned.model, plan, report)
    if out_dir is not None:
        write_outputs(result, example_inputs, Path(out_dir), outputs)
    return result


def structured_choice(
    model: nn.Module,
    structure: Structure,
    splits: Splits,
    method: str,
    budget: float | None,
    cost: str,
    counts: Mapping[str, int] | None,
    fraction: float | None,
    normalizer: str,
    seed: int,
    floor: int | Mapping[str, int] | None = None,
) -> Choice:
    """The kept set of a structured method, sliced (and checked) into the model fine-tuning starts from."""
    if method not in METHODS or method in UNSTRUCTURED_METHODS or method in NEEDS_PLAN:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {', '.join(METHODS)}.")
    given = [name for name, value in (("budget", budget), ("counts", counts), ("fraction", fraction)) if value is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            f"method {method} needs exactly one of budget, counts or fraction; got {given or 'none'}."
        )
    details: dict[str, Any] = {}
    if method in BUDGET_METHODS and budget is None:
        raise ValueError(
            f"method {method} takes a budget only (a fraction of {cost} left), not counts or a fraction."
        )
    if method == "magnitude_floor":
        floors = selection.resolve_floors(model, structure, budget, cost, floor)
        kept = selection.magnitude_floor_at_budget(model, structure, budget, cost, normalizer, floors)
        details["magnitude_floor"] = {"floors": floors, "default": floor is None}
    elif method == "uniform":
        kept_fraction = selection.uniform_fraction_at_budget(structure, budget, cost)
        kept = selection.magnitude_at_fraction(model, structure, kept_fraction)
        details["uniform"] = {"kept_fraction": kept_fraction}
    elif method == "torch_pruning":
        if budget is None:
            raise ValueError("method torch_pruning takes a budget (fraction of params or MACs left) only.")
        reference_choice = reference.torch_pruning_kept(model, structure, splits.train[0][:1], budget, cost)
        kept = reference_choice.kept
        details["torch_pruning"] = {
            "pruning_ratio": reference_choice.pruning_ratio,
            "params": reference_choice.params,  # Torch-Pruning's own count of its pruned model
            "macs": reference_choice.macs,
        }
    elif counts is None and fraction is None and method == "magnitude":
        kept = selection.magnitude_at_budget(model, structure, budget, cost, normalizer)
    else:
        if counts is None:
            counts = (
                selection.uniform_counts(structure, fraction)
                if fraction is not None
                else selection.counts_of(
                    selection.magnitude_floor_at_budget(model, structure, budget, cost, normalizer, floor)
                )
            )
        kept = (
            selection.magnitude_at_counts(model, structure, counts)
            if method == "magnitude"
            else selection.random_at_counts(structure, counts, seed)
        )
    sliced, difference = slice_checked(model, structure, kept, splits.test[0][:SLICE_CHECK_SAMPLES])
    details["sliced_vs_masked_max_abs_diff"] = difference
    return Choice(sliced, kept, None, details)


def scratch_choice(
    model: nn.Module,
    structure: Structure,
    splits: Splits,
    plan: SlicingPlan | str | os.PathLike[str] | None,
    counts: Mapping[str, int] | None,
    fraction: float | None,
    seed: int,
) -> Choice:
    """Another run's architecture (its plan's kept counts, or `counts`), sliced from `model` and then
    re-initialised (`reinitialised(sliced, seed)`): the shared recipe trains it from scratch."""
    if (plan is None) == (counts is None) or fraction is not None:
        raise ValueError(
            "method scratch takes the architecture of another run: exactly one of plan=<that run's "
            "slicing_plan.json> (deepiot-baseline: method.plan=<path>) or counts={group: count}; "
            f"got plan={plan!r}, counts={counts!r}"
            + (f", fraction={fraction}" if fraction is not None else "")
            + "."
        )
    source = None
    if plan is not None:
        if not isinstance(plan, SlicingPlan):
            source, plan = str(plan), SlicingPlan.load(plan)
        plan.validate(structure)
        kept = {name: [int(i) for i in indices] for name, indices in plan.kept.items()}
    else:
        selection.check_counts(structure, counts)
        kept = {
            group.name: list(range(int(counts.get(group.name, group.size)))) for group in structure.groups
        }
    sliced, difference = slice_checked(model, structure, kept, splits.test[0][:SLICE_CHECK_SAMPLES])
    fresh, modules = reinitialised(sliced, seed)
    details = {
        "sliced_vs_masked_max_abs_diff": difference,
        "scratch": {
            "plan": source,
            "kept_counts": selection.counts_of(kept),
            "seed": seed,
            "reinitialised_modules": modules,
            "note": SCRATCH_NOTE,
        },
    }
    return Choice(fresh, kept, None, details)


SCRATCH_NOTE = (
    "training from scratch (Liu et al., ICLR 2019, 'Rethinking the value of network pruning'): the pruned "
    "architecture of another run, every module re-initialised (reset_parameters, seeded by the run seed) and "
    "trained with the shared fine-tuning recipe (same steps, lr and distillation from the original) — the "
    "recipe's steps, not a full training schedule (their Scratch-E/-B train as long as the original)."
)


def device_budget(
    model: nn.Module,
    structure: Structure,
    method: str,
    limit: float,
    cost: str,
    profile: LatencyProfile | None,
) -> tuple[str, float]:
    """(structure cost, fraction of the original) that a budget in device units allows; BudgetError when the
    original already fits, the budget is impossible, or a latency budget has no usable profile."""
    if method not in DEVICE_BUDGET_METHODS:
        raise ValueError(
            f"method {method} takes a params or macs budget only; a {cost} budget works with "
            f"{', '.join(DEVICE_BUDGET_METHODS)} and deepiot."
        )
    setting = f"target_{cost}"
    needed_by = f"a {cost} budget" if cost == "latency_ms" else None
    attach_profile(structure, model, profile or LatencyProfile(), needed_by)
    ((fraction_cost, fraction),) = budget_fractions(structure, {setting: limit}).items()
    return fraction_cost, fraction


def unstructured_choice(
    model: nn.Module, budget: float | None, cost: str, method: str = "unstructured", steps: int = 0
) -> Choice:
    """Masks of magnitude pruning at a params budget (the model keeps its dense shape): one global |w| ranking
    at once (unstructured), or LAMP's ranking reached gradually over the first half of the `steps` fine-tuning
    steps (unstructured_fair; its masks here are the one-shot ones, used when there is no fine-tuning)."""
    if budget is None or cost != "params":
        raise ValueError(f"method {method} takes a params budget only (e.g. budget=0.02, cost='params').")
    if method == "unstructured_fair":
        pruning = unstructured.GradualPruning.for_budget(model, budget, steps)
        masks = unstructured.lamp_masks(model, pruning.final_keep)
        return Choice(
            model, None, masks, {"unstructured": unstructured_details(model, masks, "LAMP")}, pruning
        )
    masks = unstructured.global_magnitude_masks(model, budget)
    return Choice(model, None, masks, {"unstructured": unstructured_details(model, masks, "global |w|")})


def unstructured_details(model: nn.Module, masks: Mapping[str, Tensor], ranking: str) -> dict[str, Any]:
    """The report's "unstructured" entry: nonzero parameters, the ranking, kept fraction per tensor."""
    total = sum(parameter.numel() for parameter in model.parameters())
    nonzero = unstructured.nonzero_params(model, dict(masks))
    return {
        "nonzero_params": nonzero,
        "nonzero_fraction": nonzero / total,
        "ranking": ranking,
        "kept_fraction_per_tensor": {name: float(mask.mean()) for name, mask in masks.items()},
        "emptied_tensors": [name for name, mask in masks.items() if not bool(mask.any())],
        "note": unstructured.SPARSE_NOTE,
    }


def method_report(
    original: nn.Module,
    tuned: FinetuneResult,
    structure: Structure | None,
    kept: Mapping[str, list[int]] | None,
    splits: Splits,
    recipe: FinetuneConfig,
    wall_time_s: dict[str, float],
) -> dict[str, Any]:
    """The loop-report fields `build_report` reads, for a one-shot choice (no search history)."""
    sizes = structure.group_sizes if structure is not None else {}
    kept = kept if kept is not None else {name: list(range(size)) for name, size in sizes.items()}
    batch = recipe.eval_batch_size
    return {
        "stop_reason": f"one-shot choice, then {recipe.steps} fine-tuning steps (best validation kept)",
        "iterations": 0,
        "finetune_iterations": recipe.steps,
        "group_sizes": sizes,
        "kept_counts": selection.counts_of(kept),
        "kept": {name: list(indices) for name, indices in kept.items()},
        "accuracy": {
            "original_val": accuracy(original, *splits.val, batch),
            "original_test": accuracy(original, *splits.test, batch),
            "compressed_val": tuned.best_val_accuracy,
            "compressed_test": accuracy(tuned.model, *splits.test, batch),
        },
        "wall_time_s": wall_time_s,
        "sliced_vs_masked_max_abs_diff": 0.0,
        "history": [],
    }


def method_details(
    method: str,
    budget: float | None,
    cost: str,
    counts: Mapping[str, int] | None,
    fraction: float | None,
    normalizer: str,
    seed: int,
    floor: int | Mapping[str, int] | None = None,
    plan: SlicingPlan | str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The report's record of how the method was asked to choose."""
    counts = dict(counts) if counts is not None else None
    floor = dict(floor) if isinstance(floor, Mapping) else floor
    if plan is not None:
        plan = "(a SlicingPlan object)" if isinstance(plan, SlicingPlan) else str(plan)
    return {
        "method": {
            "name": method,
            "budget": budget,
            "cost": cost,
            "counts": counts,
            "fraction": fraction,
            "normalizer": normalizer,
            "seed": seed,
            "floor": floor,
            "plan": plan,
        }
    }


def write_outputs(
    result: CompressionResult, example_inputs: Tensor, out_dir: Path, outputs: OutputOptions
) -> None:
    """Structured: plan + export + report (as `deepiot.compress` writes them); unstructured: the report only."""
    if result.plan is not None:
        save_outputs(result, result.report, example_inputs, out_dir, outputs)
    else:
        result.report["files"] = {
            kind: str(path) for kind, path in write_report(result.report, out_dir).items()
        }
    plot_finetuning(result.report["finetune_history"], out_dir / FINETUNE_PLOT)
    result.report["files"]["finetune_plot"] = str(out_dir / FINETUNE_PLOT)


def plot_finetuning(history: list[Mapping[str, float]], path: Path) -> None:
    """Validation accuracy and training loss over the fine-tuning steps."""
    from deepiot.report import _pyplot

    plt = _pyplot()
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    accuracy_axes.plot([r["step"] for r in history], [r["val_accuracy"] for r in history], marker=".")
    accuracy_axes.set_xlabel("fine-tuning step")
    accuracy_axes.set_ylabel("validation accuracy")
    trained = [r for r in history if "train_loss" in r]
    loss_axes.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], marker=".")
    loss_axes.set_xlabel("fine-tuning step")
    loss_axes.set_ylabel("training loss (mean since last evaluation)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
