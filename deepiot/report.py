"""What a compression achieved, measured on the real models: report.json, report.md and PNG plots.

Costs are counted by the independent counter (`measure_cost`) on the original and on the sliced model, and
host latency is measured (`measure_latency`, batch 1) on both — never taken from the structure's model of
the cost that the compressor optimised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepiot.cost.counter import ExampleInputs, measure_cost
from deepiot.cost.latency import measure_latency
from deepiot.utils import atomic_write

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
KEPT_PLOT = "kept_elements.png"
PROGRESS_PLOT = "progress.png"


def build_report(
    original: nn.Module,
    sliced: nn.Module,
    loop_report: Mapping[str, Any],
    example_inputs: ExampleInputs,
    *,
    latency_threads: int | None = 1,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Combine the loop's report with measured costs (and latency unless `latency_threads` is None).

    Args:
        original: the uncompressed model.
        sliced: the compressed, physically smaller model.
        loop_report: `CompressionResult.report` from `compress_model`.
        example_inputs: one input batch (its first sample is used).
        latency_threads: torch threads for the latency measurement; None skips it.
        extra: further top-level entries (e.g. name, command, training time of the original).
    """
    cost_before = measure_cost(original, example_inputs)._asdict()
    cost_after = measure_cost(sliced, example_inputs)._asdict()
    report: dict[str, Any] = {
        **(extra or {}),
        "stop_reason": loop_report["stop_reason"],
        "iterations": loop_report["iterations"],
        "finetune_iterations": loop_report["finetune_iterations"],
        "groups": [
            {"name": name, "original": size, "kept": loop_report["kept_counts"][name]}
            for name, size in loop_report["group_sizes"].items()
        ],
        "cost": {
            "original": cost_before,
            "compressed": cost_after,
            "left": {key: cost_after[key] / cost_before[key] for key in cost_before},
        },
        "accuracy": dict(loop_report["accuracy"]),
        "wall_time_s": dict(loop_report["wall_time_s"]),
        "gradient_variance": gradient_variance_summary(loop_report["history"]),
        "sliced_vs_masked_max_abs_diff": loop_report["sliced_vs_masked_max_abs_diff"],
        "history": list(loop_report["history"]),
    }
    if "magnitude_at_same_counts" in loop_report:
        report["magnitude_at_same_counts"] = dict(loop_report["magnitude_at_same_counts"])
    if "element_choice" in loop_report:
        report["element_choice"] = dict(loop_report["element_choice"])
    if "budgets" in loop_report:
        report["budgets"] = dict(loop_report["budgets"])
    if latency_threads is not None:
        before = measure_latency(original, example_inputs, threads=latency_threads).median_ms
        after = measure_latency(sliced, example_inputs, threads=latency_threads).median_ms
        report["latency_ms"] = {
            "threads": latency_threads,
            "original": before,
            "compressed": after,
            "left": after / before,
        }
    return report


def gradient_variance_summary(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over evaluations of the compressor's gradient variance under each baseline, and their ratio."""
    summary = {}
    for name in ("ema", "learned"):
        values = [record[f"grad_var_{name}"] for record in history if f"grad_var_{name}" in record]
        if values:
            summary[f"mean_{name}"] = float(np.mean(values))
    if summary.get("mean_ema"):
        summary["learned_over_ema"] = summary.get("mean_learned", float("nan")) / summary["mean_ema"]
    return summary


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the two plots, report.md and, last, report.json into `out_dir` (each atomically); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / REPORT_JSON,
        "markdown": out_dir / REPORT_MD,
        "kept_plot": out_dir / KEPT_PLOT,
        "progress_plot": out_dir / PROGRESS_PLOT,
    }
    # report.json last: a folder holding it is complete
    plot_kept_elements(report["groups"], paths["kept_plot"])
    plot_progress(report["history"], paths["progress_plot"])
    atomic_write(paths["markdown"], lambda file: file.write(markdown(report)))
    atomic_write(paths["json"], lambda file: file.write(json.dumps(report, indent=2) + "\n"))
    return paths


def budget_lines(budgets: Mapping[str, Any] | None) -> list[str]:
    """Table rows of the device-unit values (predicted latency, model and peak activation KiB) and of each budget."""
    if not budgets:
        return []
    units = {"latency_ms": "predicted latency (ms)", "model_kb": "model KiB (fp32 weights)",
             "peak_activation_kb": "peak activation KiB"}  # fmt: skip
    lines = [
        f"| {label} | {budgets['original'][key]:.4g} | {budgets['compressed'][key]:.4g} | "
        f"{100 * budgets['compressed'][key] / budgets['original'][key]:.1f}% |"
        for key, label in units.items()
        if key in budgets["original"]
    ]
    for key, target in budgets["targets"].items():
        lines.append(
            f"| budget {key} = {target['value']:g} {target['unit']} | — | {100 * target['result_fraction']:.2f}% of "
            f"the original | allowed {100 * target['fraction']:.2f}% |"
        )
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """A human-readable summary table of the report."""
    cost, accuracy = report["cost"], report["accuracy"]
    lines = [f"# Compression report{': ' + report['name'] if 'name' in report else ''}", ""]
    lines += [
        f"Stopped: {report['stop_reason']} after {report['iterations']} iterations, then "
        f"{report['finetune_iterations']} fine-tuning iterations.",
        "",
    ]
    lines += ["| quantity | original | compressed | left |", "|-|-|-|-|"]
    for key in ("params", "macs", "activation_bytes", "model_bytes"):
        lines.append(
            f"| {key} | {cost['original'][key]:,} | {cost['compressed'][key]:,} | {100 * cost['left'][key]:.2f}% |"
        )
    if "latency_ms" in report:
        latency = report["latency_ms"]
        lines.append(
            f"| host latency, batch 1, {latency['threads']} thread(s) (ms) | {latency['original']:.3f} | "
            f"{latency['compressed']:.3f} | {100 * latency['left']:.1f}% |"
        )
    lines += budget_lines(report.get("budgets"))
    lines.append(
        f"| test accuracy | {accuracy['original_test']:.4f} | {accuracy['compressed_test']:.4f} | "
        f"Δ {accuracy['compressed_test'] - accuracy['original_test']:+.4f} |"
    )
    lines.append(
        f"| val accuracy | {accuracy['original_val']:.4f} | {accuracy['compressed_val']:.4f} | "
        f"Δ {accuracy['compressed_val'] - accuracy['original_val']:+.4f} |"
    )
    reference = report.get("magnitude_at_same_counts")
    if reference:
        lines.append(
            f"| test accuracy of L1 magnitude at the same counts, same recipe for {reference['finetune_steps']} steps "
            f"(the critic's search + fine-tuning steps) | {accuracy['original_test']:.4f} | "
            f"{reference['test_accuracy']:.4f} | DeepIoT − magnitude: "
            f"{100 * (accuracy['compressed_test'] - reference['test_accuracy']):+.2f} points |"
        )
    lines += ["", "| group | original elements | kept | kept % |", "|-|-|-|-|"]
    for group in report["groups"]:
        lines.append(
            f"| {group['name']} | {group['original']} | {group['kept']} | {100 * group['kept'] / group['original']:.1f}% |"
        )
    times = report["wall_time_s"]
    lines += ["", "Wall time (s): " + ", ".join(f"{key} {value:.1f}" for key, value in times.items())]
    training = report.get("original_training_wall_time_s")
    if training:
        total = sum(times.values())
        lines[-1] += (
            f"; training the original took {training:.1f} s (compression / training = {total / training:.2f})"
        )
    variance = report.get("gradient_variance") or {}
    if variance:
        lines += [
            "",
            "Compressor gradient variance (mean over evaluations, w.r.t. its output logits): "
            + ", ".join(f"{key} {value:.4g}" for key, value in variance.items()),
        ]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_kept_elements(groups: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bar chart: the kept fraction of every group's hidden elements, labelled "kept/original" (a fraction,
    so a 20-filter conv layer shows beside a 500-unit FC layer)."""
    plt = _pyplot()
    names = [group["name"] for group in groups]
    fractions = [100 * group["kept"] / max(group["original"], 1) for group in groups]
    positions = np.arange(len(names))
    figure, axes = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 3.5))
    bars = axes.bar(positions, fractions, 0.6, color="tab:orange")
    labels = [f"{group['kept']}/{group['original']}" for group in groups]
    axes.bar_label(bars, labels, fontsize=8, padding=2)
    axes.set_xticks(positions, names, rotation=30, ha="right")
    axes.set_ylim(0, 112)
    axes.set_ylabel("hidden elements kept (%)")
    axes.set_title("Kept fraction per layer (kept/original above each bar)")
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, dpi=120, format="png"), binary=True)
    plt.close(figure)


def plot_progress(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """Validation accuracy, parameters/MACs left and τ over the compression iterations."""
    plt = _pyplot()
    iterations = [record["iteration"] for record in history]
    figure, (accuracy_axes, size_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    accuracy_axes.plot(iterations, [record["val_accuracy"] for record in history], marker=".")
    accuracy_axes.set_xlabel("iteration")
    accuracy_axes.set_ylabel("validation accuracy (pruned structure)")
    size_axes.plot(iterations, [100 * record["params_ratio"] for record in history], label="params left %")
    size_axes.plot(iterations, [100 * record["macs_ratio"] for record in history], label="MACs left %")
    size_axes.plot(iterations, [100 * record["tau"] for record in history], "--", label="τ × 100")
    size_axes.set_xlabel("iteration")
    size_axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, dpi=120, format="png"), binary=True)
    plt.close(figure)
