"""Latency-budgeted vs parameter-budgeted compression, measured side by side in ONNX Runtime (batch 1, 1 thread).

For every task: the original (exported here from outputs/train/<task>/model.pt) and the exports of finished
`deepiot-compress` runs are timed in one interleaved loop (`time_interleaved`: rounds over all models, so load
changes on a shared machine hit every model alike). Writes results.json, table.md and latency.png into --out; labels starting with "params" / "latency" are
drawn blue / orange.

    python scripts/benchmarks/bench_device_budgets.py \
        --run lenet5_mnist:params=outputs/device_budgets/lenet5_mnist_params \
        --run lenet5_mnist:latency=outputs/device_budgets/lenet5_mnist_latency \
        --profile experiments/device/host_ort_1thread/device_profile.json --out experiments/device/budgets
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepiot.checkpoint import load_trained_model
from deepiot.cost.latency import onnx_call, time_interleaved
from deepiot.device import attach_latency_model
from deepiot.export import export_model
from deepiot.report import _pyplot
from deepiot.structure import Structure

COLORS = {"original": "0.6", "params": "tab:blue", "latency": "tab:orange"}  # by the label's first word


def parse_runs(values: list[str]) -> dict[str, dict[str, Path]]:
    """{task: {label: run folder}} from "task:label=folder" arguments."""
    runs: dict[str, dict[str, Path]] = {}
    for value in values:
        head, _, folder = value.partition("=")
        task, _, label = head.partition(":")
        if not (task and label and folder):
            raise SystemExit(f"--run expects task:label=<run folder>, got {value!r}.")
        report = Path(folder) / "report.json"
        if not report.is_file() or not (Path(folder) / "export" / "model.onnx").is_file():
            raise SystemExit(
                f"{folder} holds no finished deepiot-compress run (report.json, export/model.onnx)."
            )
        runs.setdefault(task, {})[label] = Path(folder)
    return runs


def run_record(folder: Path, predictor: Any) -> dict[str, Any]:
    """Accuracy, kept counts, params/MACs left and predicted latency of one finished run."""
    report = json.loads((folder / "report.json").read_text())
    counts = {group["name"]: group["kept"] for group in report["groups"]}
    budgets = {key: value["value"] for key, value in report.get("budgets", {}).get("targets", {}).items()}
    return {
        "folder": str(folder),
        "budgets": budgets or {"target_params": report["config"]["loop"]["target_params"]},
        "kept_counts": counts,
        "test_accuracy": report["accuracy"]["compressed_test"],
        "original_test_accuracy": report["accuracy"]["original_test"],
        "params_left": report["cost"]["left"]["params"],
        "macs_left": report["cost"]["left"]["macs"],
        "model_kb": report["cost"]["compressed"]["model_bytes"] / 1024,
        "predicted_ms": float(predictor.predict(counts)),
        "onnx": str(folder / "export" / "model.onnx"),
    }


def bench_task(task: str, runs: dict[str, Path], profile: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Time the original and every run of `task` side by side; return the task's records."""
    model, checkpoint = load_trained_model(Path(args.originals) / task / "model.pt")
    example = torch.zeros(1, *checkpoint["data"]["input_shape"])
    structure = Structure.from_model(model, example)
    predictor = attach_latency_model(structure, model, profile)
    exported = export_model(model.eval(), example, tmp / task, manifest_extra={}, formats=["onnx"])
    records = {"original": {
        "test_accuracy": checkpoint["metrics"]["test_accuracy"], "params_left": 1.0, "macs_left": 1.0,
        "model_kb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1024,
        "predicted_ms": float(predictor.predict(dict(structure.group_sizes))), "onnx": str(exported.paths["onnx"]),
    }}  # fmt: skip
    records.update({label: run_record(folder, predictor) for label, folder in runs.items()})
    calls = {label: onnx_call(record["onnx"], example, threads=1) for label, record in records.items()}
    print(f"{task}: timing {', '.join(calls)} side by side ({args.repeats} calls each, {args.rounds} rounds)")
    stats = time_interleaved(calls, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
    for label, record in records.items():
        record.update(
            measured_ms=stats[label].median_ms, p10_ms=stats[label].p10_ms, p90_ms=stats[label].p90_ms
        )
        record["latency_cut"] = 1.0 - record["measured_ms"] / stats["original"].median_ms
        record["accuracy_loss_points"] = 100 * (
            records["original"]["test_accuracy"] - record["test_accuracy"]
        )
    return records


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| task | model | budget | kept per group | params left | MACs left | model KiB | test accuracy (loss, points) "
        "| predicted ms | measured ORT ms (p10–p90) | latency cut |",
        "|-|-|-|-|-|-|-|-|-|-|-|",
    ]
    for task, records in results.items():
        for label, r in records.items():
            budget = (
                ", ".join(f"{k.removeprefix('target_')} {v:g}" for k, v in r.get("budgets", {}).items())
                or "—"
            )
            kept = "-".join(str(v) for v in r["kept_counts"].values()) if "kept_counts" in r else "all"
            lines.append(
                f"| {task} | {label} | {budget} | {kept} | {100 * r['params_left']:.2f}% | {100 * r['macs_left']:.2f}% "
                f"| {r['model_kb']:.1f} | {100 * r['test_accuracy']:.2f}% ({r['accuracy_loss_points']:+.2f}) "
                f"| {r['predicted_ms']:.4f} | {r['measured_ms']:.4f} ({r['p10_ms']:.4f}–{r['p90_ms']:.4f}) "
                f"| {100 * r['latency_cut']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Measured median latency per model and task (whiskers p10–p90, cut at the axis), the profile's prediction
    as a cross, test accuracy and latency cut written on each bar; params budgets blue, latency budgets orange."""
    plt = _pyplot()
    widths = [1.6 + 1.1 * len(records) for records in results.values()]
    figure, axes = plt.subplots(
        1, len(results), figsize=(sum(widths), 4.5), squeeze=False, width_ratios=widths
    )
    for axis, (task, records) in zip(axes[0], results.items(), strict=True):
        labels = list(records)
        medians = np.array([records[k]["measured_ms"] for k in labels])
        errors = np.array([[records[k]["measured_ms"] - records[k]["p10_ms"] for k in labels],
                           [records[k]["p90_ms"] - records[k]["measured_ms"] for k in labels]])  # fmt: skip
        colors = [COLORS.get(label.split("_")[0], "0.6") for label in labels]
        bars = axis.bar(labels, medians, yerr=errors, capsize=4, color=colors)
        axis.scatter(labels, [records[k]["predicted_ms"] for k in labels], color="k", marker="x", zorder=3,
                     label="predicted by the profile")  # fmt: skip
        top = 1.35 * float(medians.max())
        for bar, label in zip(bars, labels, strict=True):
            r = records[label]
            text = f"{100 * r['test_accuracy']:.2f}%" + (
                f"\n−{100 * r['latency_cut']:.1f}%" if label != "original" else ""
            )
            height = min(r["p90_ms"], 0.8 * top)  # above the whisker, inside the axes
            axis.annotate(text, (bar.get_x() + bar.get_width() / 2, height), ha="center", va="bottom", fontsize=8,
                          xytext=(0, 3), textcoords="offset points")  # fmt: skip
        axis.set_title(f"{task}\nONNX Runtime, batch 1, 1 thread (median, p10–p90)", fontsize=10)
        axis.set_ylabel("latency (ms)")
        axis.set_ylim(0, top)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", action="append", required=True, help="task:label=<deepiot-compress run folder>"
    )
    parser.add_argument("--profile", required=True, help="device_profile.json whose latency model predicts")
    parser.add_argument("--originals", default="outputs/train", help="folder of <task>/model.pt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = parse_runs(args.run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            task: bench_task(task, task_runs, args.profile, args, Path(tmp))
            for task, task_runs in runs.items()
        }
    for records in results.values():
        for record in records.values():
            record.pop("onnx")
    document = {
        "machine": {"processor": platform.processor(), "machine": platform.machine(), "python": platform.python_version()},
        "settings": {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "threads": 1,
                     "batch": 1, "profile": args.profile},
        "results": results,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "table.md").write_text(table(results))
    plot(results, out / "latency.png")
    print(table(results))


if __name__ == "__main__":
    main()
