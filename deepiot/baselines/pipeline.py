"""`deepiot.baselines.prune(...)`: a baseline method end to end, with the same artefacts as `deepiot.compress`.

A structured method picks a kept set `{group: [indices]}`; then the shared path: kept set → `SlicingPlan` →
`slice_model` (checked against the masked network on real inputs) → `finetune` (the shared recipe) → test →
`build_report` (measured params/MACs/bytes/latency) → export (TorchScript, ONNX, manifest, plan) → report.
The unstructured method masks weights instead: fine-tuned with the mask fixed, reported by nonzero
parameters, never sliced or exported as a smaller model (see `unstructured.SPARSE_NOTE`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from deepiot import trainer
from deepiot.api import OutputOptions, save_outputs
from deepiot.baselines import reference, selection, unstructured
from deepiot.finetune import FinetuneConfig, FinetuneResult, finetune
from deepiot.report import build_report, write_report
from deepiot.structure import MaskedNetwork, SlicingPlan, Structure, slice_model
from deepiot.trainer import CompressionResult

METHODS = ("magnitude", "random", "torch_pruning", "unstructured")
FINETUNE_STATE = "finetune_state.pt"
FINETUNE_PLOT = "finetune.png"


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
    finetune_config: FinetuneConfig | None = None,
    teacher: nn.Module | None = None,
    seed: int = 0,
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
        method: "magnitude" (L1 of each element's weights), "random" (a control), "torch_pruning"
            (Torch-Pruning's global group-magnitude pruner; no recurrent layers) or "unstructured" (global
            weight magnitude; a sparse model, not a smaller dense one).
        budget: fraction of the original `cost` left, in (0, 1] (magnitude: global ranking normalised per group;
            random: the per-group counts magnitude picks at this budget; torch_pruning: its global ratio).
        cost: "params" or "macs" (unstructured: params only).
        counts: kept elements per group (magnitude, random), instead of a budget.
        fraction: kept fraction of every group (magnitude, random), instead of a budget.
        normalizer: magnitude's per-group score normaliser for a budget, "mean" or "max".
        finetune_config: the shared recipe (default `FinetuneConfig()`; `steps=0` skips fine-tuning).
        teacher: distillation teacher when `finetune_config.distill_weight > 0` (default: `model` itself).
        seed: random's seed.
        out_dir: with it, fine-tuning resumes on rerun and the folder receives report.json/md, plots,
            slicing_plan.json and export/ (structured methods).
        example_inputs, structure, outputs: as in `deepiot.compress`.

    Returns:
        CompressionResult(the fine-tuned smaller model — for unstructured the dense masked one —, plan, report).
    """
    finetune_config = finetune_config or FinetuneConfig()
    outputs = outputs or OutputOptions()
    test_data = val_data if test_data is None else test_data
    train = trainer.dataset_tensors(train_data, "train")
    val = trainer.dataset_tensors(val_data, "val")
    test = trainer.dataset_tensors(test_data, "test")
    example_inputs = train[0][:1] if example_inputs is None else example_inputs
    original = copy.deepcopy(model).cpu().eval()
    if finetune_config.distill_weight > 0 and teacher is None:
        teacher = original
    state_path = Path(out_dir) / FINETUNE_STATE if out_dir is not None else None
    started = time.perf_counter()
    if method == "unstructured":
        chosen = unstructured_choice(original, budget, cost)
        structure, kept = None, None
    else:
        structure = structure or Structure.from_model(original, train[0][:2])
        kept, chosen = structured_choice(
            original, structure, example_inputs, method, budget, cost, counts, fraction, normalizer, seed
        )
    selection_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if kept is None:
        tuned = finetune(
            original, train, val, finetune_config, teacher=teacher, state_path=state_path,
            weight_masks=chosen["masks"], progress=progress,
        )  # fmt: skip
        plan = None
    else:
        sliced = slice_checked(original, structure, kept, test[0][: finetune_config.eval_batch_size])
        tuned = finetune(
            sliced, train, val, finetune_config, teacher=teacher, state_path=state_path, progress=progress
        )
        plan = SlicingPlan.from_structure(structure, dict(outputs.model_config), kept)
    finetune_seconds = time.perf_counter() - started
    loop_report = method_report(
        original, tuned, structure, kept, (val, test), finetune_config.eval_batch_size,
        method, {"select": selection_seconds, "finetune": finetune_seconds},
    )  # fmt: skip
    report = build_report(
        original, tuned.model, loop_report, example_inputs,
        latency_threads=outputs.latency_threads, extra=outputs.report_extra,
    )  # fmt: skip
    report.update(method_details(method, budget, cost, counts, fraction, normalizer, seed, finetune_config))
    report["finetune_history"] = tuned.history
    report.update(chosen["report"])
    if method == "unstructured":
        report["cost"]["nonzero_params"] = chosen["report"]["unstructured"]["nonzero_params"]
        report["cost"]["left"]["nonzero_params"] = chosen["report"]["unstructured"]["nonzero_fraction"]
    result = CompressionResult(tuned.model, plan, report)
    if out_dir is not None:
        write_outputs(result, example_inputs, Path(out_dir), outputs.manifest_extra)
    return result


def structured_choice(
    model: nn.Module,
    structure: Structure,
    example_inputs: Tensor,
    method: str,
    budget: float | None,
    cost: str,
    counts: Mapping[str, int] | None,
    fraction: float | None,
    normalizer: str,
    seed: int,
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """The kept set of a structured method, and what the report should say about the choice."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {', '.join(METHODS)}.")
    given = [
        name for name, value in (("budget", budget), ("counts", counts), ("fraction", fraction)) if value
    ]
    if len(given) != 1:
        raise ValueError(
            f"method {method} needs exactly one of budget, counts or fraction; got {given or 'none'}."
        )
    if method == "torch_pruning":
        if budget is None:
            raise ValueError("method torch_pruning takes a budget (fraction of params or MACs left) only.")
        choice = reference.torch_pruning_kept(model, structure, example_inputs, budget, cost)
        details = {"pruning_ratio": choice.pruning_ratio, "params": choice.params, "macs": choice.macs}
        return choice.kept, {"report": {"torch_pruning": details}}
    if counts is None:
        if fraction is not None:
            counts = selection.uniform_counts(structure, fraction)
        else:
            kept = selection.magnitude_at_budget(model, structure, budget, cost, normalizer)
            if method == "magnitude":
                return kept, {"report": {}}
            counts = selection.counts_of(kept)
    if method == "magnitude":
        return selection.magnitude_at_counts(model, structure, counts), {"report": {}}
    return selection.random_at_counts(structure, counts, seed), {"report": {}}


def unstructured_choice(model: nn.Module, budget: float | None, cost: str) -> dict[str, Any]:
    """Masks of global magnitude pruning at a params budget, and the report's description of them."""
    if budget is None or cost != "params":
        raise ValueError("method unstructured takes a params budget only (e.g. budget=0.02, cost='params').")
    masks = unstructured.global_magnitude_masks(model, budget)
    total = sum(parameter.numel() for parameter in model.parameters())
    nonzero = unstructured.nonzero_params(model, masks)
    details = {
        "nonzero_params": nonzero,
        "nonzero_fraction": nonzero / total,
        "note": unstructured.SPARSE_NOTE,
    }
    return {"masks": masks, "report": {"unstructured": details}}


def slice_checked(
    model: nn.Module, structure: Structure, kept: Mapping[str, list[int]], inputs: Tensor
) -> nn.Module:
    """`slice_model`, then a check on real inputs that it computes the hard-masked original."""
    sliced = slice_model(model, structure, kept).eval()
    with torch.no_grad():
        masked_logits = MaskedNetwork(model, structure).eval()(inputs, structure.masks_from_kept(kept))
        difference = float((masked_logits - sliced(inputs)).abs().max())
    if not difference <= trainer.SLICED_TOLERANCE * max(1.0, float(masked_logits.abs().max())):
        raise trainer.CompressionError(
            f"the sliced model's outputs differ from the masked network's by up to {difference:.3g}; the slicing "
            f"of {type(model).__name__} is wrong — please report it."
        )
    return sliced


def method_report(
    original: nn.Module,
    tuned: FinetuneResult,
    structure: Structure | None,
    kept: Mapping[str, list[int]] | None,
    splits: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    eval_batch_size: int,
    method: str,
    wall_time_s: dict[str, float],
) -> dict[str, Any]:
    """The loop-report fields `build_report` reads, for a one-shot method (no search history)."""
    val, test = splits
    sizes = structure.group_sizes if structure is not None else {}
    kept = kept if kept is not None else {name: list(range(size)) for name, size in sizes.items()}
    return {
        "stop_reason": f"one-shot {method} selection, then {tuned.history[-1]['step']} fine-tuning steps",
        "iterations": 0,
        "finetune_iterations": int(tuned.history[-1]["step"]),
        "group_sizes": sizes,
        "kept_counts": selection.counts_of(kept),
        "kept": {name: list(indices) for name, indices in kept.items()},
        "accuracy": {
            "original_val": trainer.accuracy(original, *val, eval_batch_size),
            "original_test": trainer.accuracy(original, *test, eval_batch_size),
            "compressed_val": tuned.best_val_accuracy,
            "compressed_test": trainer.accuracy(tuned.model, *test, eval_batch_size),
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
    finetune_config: FinetuneConfig,
) -> dict[str, Any]:
    return {
        "method": {
            "name": method,
            "budget": budget,
            "cost": cost,
            "counts": dict(counts) if counts else None,
            "fraction": fraction,
            "normalizer": normalizer,
            "seed": seed,
        },
        "finetune": asdict(finetune_config),
    }


def write_outputs(
    result: CompressionResult, example_inputs: Tensor, out_dir: Path, manifest_extra: Mapping[str, Any]
) -> None:
    """Structured: plan + export + report (as `deepiot.compress` writes them); unstructured: the report only."""
    if result.plan is not None:
        save_outputs(result, result.report, example_inputs, out_dir, manifest_extra)
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
