"""Does a physically sliced model run faster? Host-CPU latency of original vs sliced models, next to MACs.

For LeNet-5, DeepSense and the LSTM classifier (default widths, random-init weights: latency does not depend
on the values), keep the top-|w| ~10% of every group's hidden elements (L1 norm of each element's weight
column, at least one), slice the model physically, export both versions with `deepiot.export.export_model`
(which checks TorchScript and ONNX against PyTorch) and time one batch-1 forward pass on one thread in
PyTorch eager, TorchScript and ONNX Runtime. Original and sliced runs are interleaved round by round so
drifts of a shared machine hit both alike.

Usage (from the repository root):
    python scripts/benchmarks/bench_latency.py                       # writes experiments/latency/latency.{json,png}
    python scripts/benchmarks/bench_latency.py --repeats 100 --models lenet5
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import onnxruntime
import torch
from torch import Tensor, nn

from deepiot.cost.counter import measure_cost
from deepiot.cost.latency import LatencyStats, onnx_call, time_interleaved, torch_threads
from deepiot.export import export_model
from deepiot.models import DeepSense, LeNet5, LSTMClassifier
from deepiot.structure import Structure, slice_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "deepsense": (DeepSense, (128, 6)),
    "lstm": (LSTMClassifier, (128, 6)),
}
RUNTIMES = ("eager", "torchscript", "onnxruntime")
VARIANTS = ("original", "sliced")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--keep-fraction", type=float, default=0.1, help="share of each group's elements kept"
    )
    parser.add_argument("--repeats", type=int, default=400, help="timed batch-1 runs per model and runtime")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20, help="interleaving rounds (original, sliced, ...)")
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/latency"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx-exporter", choices=["auto", "dynamo", "torchscript"], default="auto")
    return parser.parse_args(argv)


def top_weight_kept(model: nn.Module, structure: Structure, keep_fraction: float) -> dict[str, list[int]]:
    """Per group, the indices of the ~keep_fraction elements with the largest L1 weight norm (at least 1)."""
    kept = {}
    for group in structure.groups:
        count = max(1, round(keep_fraction * group.size))
        kept[group.name] = structure.largest_l1_elements(model, group.name, count)
    return kept


def runtime_calls(
    exported: dict[str, Path], model: nn.Module, example: Tensor
) -> dict[str, Callable[[], Any]]:
    """One no-argument batch-1 call per runtime: the eager module and the two exported files."""
    torchscript = torch.jit.load(str(exported["torchscript"]))
    return {
        "eager": lambda: model(example),
        "torchscript": lambda: torchscript(example),
        "onnxruntime": onnx_call(exported["onnx"], example, threads=1),
    }


def bench_model(name: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Slice one model, export both versions, and time them side by side in every runtime."""
    model_class, input_shape = MODELS[name]
    torch.manual_seed(args.seed)
    original = model_class(input_shape=input_shape).eval()
    example = torch.randn(1, *input_shape)
    structure = Structure.from_model(original, example)
    kept = top_weight_kept(original, structure, args.keep_fraction)
    models = {"original": original, "sliced": slice_model(original, structure, kept).eval()}
    costs = {variant: measure_cost(model, example) for variant, model in models.items()}
    calls, max_abs_diff, onnx_exporters = {}, {}, {}
    for variant, model in models.items():
        out_dir = work_dir / name / variant
        result = export_model(model, example, out_dir, manifest_extra={}, onnx_exporter=args.onnx_exporter)
        calls[variant] = runtime_calls(result.paths, model, example)
        max_abs_diff[variant] = result.max_abs_diff
        onnx_exporters[variant] = json.loads(result.paths["manifest"].read_text())["onnx"]["exporter"]
    with torch_threads(1), torch.inference_mode():
        latency = {
            runtime: time_interleaved(
                {variant: calls[variant][runtime] for variant in VARIANTS},
                args.warmup,
                args.repeats,
                args.rounds,
            )
            for runtime in RUNTIMES
        }
    return {
        "input_shape": list(input_shape),
        "groups": {
            group.name: {"size": group.size, "kept": len(kept[group.name])} for group in structure.groups
        },
        "cost": {variant: cost._asdict() for variant, cost in costs.items()},
        "ratio": {
            "params": costs["sliced"].params / costs["original"].params,
            "macs": costs["sliced"].macs / costs["original"].macs,
            **latency_ratios(latency),
        },
        "latency_ms": {
            runtime: {variant: stats._asdict() for variant, stats in by_variant.items()}
            for runtime, by_variant in latency.items()
        },
        "export_max_abs_diff": max_abs_diff,
        "onnx_exporter": onnx_exporters,
    }


def latency_ratios(latency: dict[str, dict[str, LatencyStats]]) -> dict[str, float]:
    """sliced / original per runtime, of the medians and of the 10th percentiles.

    The 10th percentile is less disturbed than the median by other jobs on a shared machine.
    """
    ratios = {}
    for runtime, stats in latency.items():
        ratios[f"latency_{runtime}"] = stats["sliced"].median_ms / stats["original"].median_ms
        ratios[f"latency_p10_{runtime}"] = stats["sliced"].p10_ms / stats["original"].p10_ms
    return ratios


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per model: params, MACs and median latency per runtime as original → sliced (sliced/original).

    Latency cells also give the ratio of the 10th percentiles after the bar.
    """
    header = f"{'model':<10} {'params':>22} {'MACs':>26}" + "".join(f" {runtime:>34}" for runtime in RUNTIMES)
    lines = [header, "-" * len(header)]
    for name, record in results.items():
        cost, ratio = record["cost"], record["ratio"]
        cells = [
            _cell(cost["original"]["params"], cost["sliced"]["params"], ratio["params"], "{:,.0f}", 22),
            _cell(cost["original"]["macs"], cost["sliced"]["macs"], ratio["macs"], "{:,.0f}", 26),
        ]
        for runtime in RUNTIMES:
            medians = [record["latency_ms"][runtime][variant]["median_ms"] for variant in VARIANTS]
            ratios = f"{ratio[f'latency_{runtime}']:.3f} | p10 {ratio[f'latency_p10_{runtime}']:.3f}"
            cells.append(_cell(*medians, ratios, "{:.3f}ms", 34))
        lines.append(f"{name:<10} " + " ".join(cells))
    return "\n".join(lines)


def _cell(original: float, sliced: float, ratio: float | str, number: str, width: int) -> str:
    ratio_text = f"{ratio:.3f}" if isinstance(ratio, float) else ratio
    text = f"{number.format(original)}→{number.format(sliced)} ({ratio_text})"
    return f"{text:>{width}}"


def plot(results: dict[str, dict[str, Any]], path: Path, keep_fraction: float) -> None:
    """Bars of sliced/original ratios per model: params, MACs and measured latency in each runtime."""
    measures = ["params", "macs", *(f"latency_{runtime}" for runtime in RUNTIMES)]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(measures)
    for index, measure in enumerate(measures):
        positions = [
            model_index + (index - (len(measures) - 1) / 2) * width for model_index in range(len(results))
        ]
        values = [record["ratio"][measure] for record in results.values()]
        bars = axes.bar(positions, values, width, label=measure.replace("_", " "))
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(range(len(results)), list(results))
    axes.set_ylabel("sliced / original")
    axes.set_yscale("log")
    axes.set_title(
        f"Sliced (~{keep_fraction:.0%} of elements kept) vs original: cost and batch-1 CPU latency (1 thread)"
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: command, commit, versions, host, settings."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "deepiot", "scripts"], check=False)
    return {
        "command": " ".join(["python", *sys.argv]),
        "commit": commit.strip() or None,
        "uncommitted_changes": changed.returncode != 0,  # in tracked files under deepiot/ or scripts/
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "threads": 1,
        "batch_size": 1,
        "settings": {key: value for key, value in vars(args).items() if key != "out_dir"},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work_dir:
        results = {name: bench_model(name, args, Path(work_dir)) for name in args.models}
    print(format_table(results))
    document = {**environment(args), "models": results}
    (args.out_dir / "latency.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(results, args.out_dir / "latency.png", args.keep_fraction)
    print(f"wrote {args.out_dir / 'latency.json'} and {args.out_dir / 'latency.png'}")


if __name__ == "__main__":
    main()
