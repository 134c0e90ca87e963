"""ExecuTorch and ONNX Runtime, fp32 and int8, for trained originals and their compressed models, side by side.

python scripts/edge_table.py <task>.original=<model.pt> <task>.compressed=<finetuned_model.pt | run folder> \
    [<task>.original=... ...] [out_dir=experiments/device/executorch] [work_dir=/tmp/edge_table] \
    [repeats=500] [windows=256] [litert=false]

A compressed model is a fine-tuned sliced checkpoint (deepiot-compress's finetuned_model.pt) or a deepiot-baseline
run folder (slicing_plan.json + finetune_state.pt: the best fine-tuned weights; checked against the folder's
export/model.ts when there is one). Every model is exported to ONNX and ExecuTorch (XNNPACK, batch 1; both checked
against PyTorch by export_model), then quantised to int8 in both (ONNX Runtime static QDQ; PT2E for XNNPACK),
calibrated on `windows` training windows of the original's dataset; fp32 and int8 test accuracy is measured on the
whole test split in each runtime (the ExecuTorch program window by window). Latency: per task, all eight programs
(original/compressed × fp32/int8 × ExecuTorch/ONNX Runtime) timed interleaved in one run, batch 1, 1 thread, median
of `repeats` calls. With litert=true (needs the [litert] extra, see deepiot/litert.py) each model is also converted
to LiteRT (fp32 model.tflite, checked in LiteRT's interpreter), its test accuracy measured there and its latency
timed in the same interleaved run. Writes <out_dir>/results.json and <out_dir>/table.md; exports stay in work_dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from deepiot.checkpoint import load_checkpoint, load_trained_model
from deepiot.cost.latency import onnx_call, time_interleaved
from deepiot.edge import executorch_call, export_int8_executorch, runtime_threads
from deepiot.export import (
    EXECUTORCH_INT8_NAME,
    FILE_NAMES,
    INT8_NAME,
    PLAN_NAME,
    example_input,
    export_model,
    load_sliced_model,
)
from deepiot.quantize import checkpoint_datasets, export_int8
from deepiot.structure import SlicingPlan
from deepiot.structure.plan import build_sliced_model

VARIANTS = ("original", "compressed")
SETTINGS = {
    "out_dir": "experiments/device/executorch",
    "work_dir": "/tmp/edge_table",
    "repeats": "500",
    "windows": "256",
    "litert": "false",
}
NO_BOUND = 100.0  # record int8 whatever its accuracy; the table states the drop against the 0.5-point goal
GOAL_DROP_POINTS, GOAL_LATENCY_CUT = 0.5, 0.80


def refuse(message: str) -> NoReturn:
    """One `edge_table: error: ...` line and exit status 2, as the deepiot commands refuse bad input."""
    print(f"edge_table: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(arguments: list[str]) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """{task: {original, compressed}} and the settings; `refuse` on bad input, before any work."""
    tasks: dict[str, dict[str, Path]] = {}
    settings = dict(SETTINGS)
    for argument in arguments:
        key, sep, value = argument.partition("=")
        task, dot, variant = key.rpartition(".")
        if sep and key in SETTINGS:
            settings[key] = value
        elif sep and dot and variant in VARIANTS and Path(value).exists():
            tasks.setdefault(task, {})[variant] = Path(value)
        else:
            refuse(
                f"{argument!r} is invalid: expected <task>.original=<existing checkpoint>, "
                f"<task>.compressed=<existing sliced checkpoint or run folder>, or one of {sorted(SETTINGS)}=..."
            )
    incomplete = [task for task, paths in tasks.items() if set(paths) != set(VARIANTS)]
    if not tasks or incomplete:
        missing = f"task(s) without both: {incomplete}" if tasks else "no task given"
        refuse(
            "expected <task>.original=<checkpoint> and <task>.compressed=<checkpoint or run folder> for every "
            f"task; {missing}"
        )
    if settings["litert"] not in ("true", "false"):
        refuse(f"litert={settings['litert']!r} is invalid: expected true or false")
    for key in ("repeats", "windows"):
        if not settings[key].isdigit() or int(settings[key]) < 1:
            refuse(f"{key}={settings[key]!r} is invalid: expected an integer >= 1")
    return tasks, settings


def load_compressed(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(sliced model in eval mode, its model_config) from a sliced checkpoint or a baseline run folder."""
    if path.is_file():
        model, checkpoint = load_sliced_model(path)
        return model, checkpoint["model_config"]
    plan = SlicingPlan.load(path / PLAN_NAME)
    weights = load_checkpoint(path / "finetune_state.pt", kind="finetune_state")["best_state_dict"]
    example = example_input(plan.model_config)
    model = build_sliced_model(plan, weights, example).eval()
    exported = path / "export" / FILE_NAMES["torchscript"]
    if exported.is_file():  # the run's own export of its final model: the same weights give the same outputs
        inputs = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            difference = (model(inputs) - torch.jit.load(str(exported))(inputs)).abs().max().item()
        if difference > 1e-4:
            refuse(f"{path} weights do not reproduce {exported} (max diff {difference})")
    return model, plan.model_config


def export_variant(
    model: nn.Module, config: dict[str, Any], folder: Path, train, test, windows: int, litert: bool
) -> dict:
    """fp32 ONNX + ExecuTorch (+ LiteRT) (checked), then int8 in ONNX and ExecuTorch; the manifest (with both
    int8 records)."""
    export_model(
        model,
        example_input(config),
        folder,
        manifest_extra={"model_config": config},
        formats=["onnx", "executorch", *(["litert"] if litert else [])],
    )
    export_int8(folder, train, test, windows=windows, max_drop_points=NO_BOUND)
    export_int8_executorch(model, folder, train, test, windows=windows, max_drop_points=NO_BOUND)
    return json.loads((folder / "manifest.json").read_text())


def side_by_side(
    folders: dict[str, Path], example: torch.Tensor, repeats: int, litert: bool
) -> dict[str, float]:
    """Median batch-1 ms of every program of the task, all timed interleaved in one run (1 thread)."""
    calls = {}
    for variant, folder in folders.items():
        if litert:
            from deepiot.litert import litert_call

            calls[f"litert/fp32/{variant}"] = litert_call(folder / FILE_NAMES["litert"], (example,))
        for precision, name in (("fp32", FILE_NAMES["executorch"]), ("int8", EXECUTORCH_INT8_NAME)):
            calls[f"executorch/{precision}/{variant}"] = executorch_call(folder / name, (example,))
        for precision, name in (("fp32", FILE_NAMES["onnx"]), ("int8", INT8_NAME)):
            calls[f"onnxruntime/{precision}/{variant}"] = onnx_call(folder / name, example, threads=1)
    if runtime_threads() != 1:
        refuse("ExecuTorch's threadpool could not be set to one thread")
    stats = time_interleaved(calls, warmup=50, repeats=repeats, rounds=10)
    return {key: value.median_ms for key, value in stats.items()}


def task_record(task: str, paths: dict[str, Path], settings: dict[str, str]) -> dict[str, Any]:
    train, test = checkpoint_datasets(paths["original"])
    original, original_checkpoint = load_trained_model(paths["original"])
    compressed, compressed_config = load_compressed(paths["compressed"])
    models = {
        "original": (original.eval(), original_checkpoint["model_config"]),
        "compressed": (compressed, compressed_config),
    }
    folders = {variant: Path(settings["work_dir"]) / task / variant for variant in VARIANTS}
    litert = settings["litert"] == "true"
    record: dict[str, Any] = {"test_windows": len(test), "variants": {}}
    for variant, (model, config) in models.items():
        print(f"[edge_table] {task} {variant}: exporting", flush=True)
        manifest = export_variant(
            model, config, folders[variant], train, test, int(settings["windows"]), litert
        )
        onnx8, pte8, pte = manifest["int8"], manifest["executorch_int8"], manifest["executorch"]
        record["variants"][variant] = {
            "source": str(paths[variant]),
            "params": sum(p.numel() for p in model.parameters()),
            "bytes": {
                "executorch_fp32": pte["bytes"],
                "executorch_int8": pte8["int8"]["bytes"],
                "onnx_fp32": onnx8["fp32"]["bytes"],
                "onnx_int8": onnx8["int8"]["bytes"],
            },
            "planned_memory_bytes": {
                "executorch_fp32": pte["planned_memory_bytes"],
                "executorch_int8": pte8["int8"]["planned_memory_bytes"],
            },
            "delegates": {"executorch_fp32": pte["delegates"], "executorch_int8": pte8["int8"]["delegates"]},
            "test_accuracy": {
                "executorch_fp32": pte8["fp32"]["test_accuracy"],
                "executorch_int8": pte8["int8"]["test_accuracy"],
                "onnx_fp32": onnx8["fp32"]["test_accuracy"],
                "onnx_int8": onnx8["int8"]["test_accuracy"],
            },
            "int8_drop_points": {
                "executorch": pte8["accuracy_drop_points"],
                "onnxruntime": onnx8["accuracy_drop_points"],
            },
        }
        if litert:
            from deepiot.litert import litert_runner

            logits = litert_runner(folders[variant] / FILE_NAMES["litert"])((test.tensors[0].float(),))[0]
            record["variants"][variant]["bytes"]["litert_fp32"] = manifest["litert"]["bytes"]
            record["variants"][variant]["test_accuracy"]["litert_fp32"] = float(
                (logits.argmax(axis=1) == test.tensors[1].numpy()).mean()
            )
    example = example_input(models["original"][1])
    print(f"[edge_table] {task}: timing every program side by side", flush=True)
    record["latency_ms"] = side_by_side(folders, example, int(settings["repeats"]), litert)
    latency = record["latency_ms"]
    record["latency_cut"] = {
        key.removesuffix("/original"): 1 - latency[key.replace("/original", "/compressed")] / latency[key]
        for key in latency
        if key.endswith("/original")
    }
    drops = [d for v in record["variants"].values() for d in v["int8_drop_points"].values()]
    record["goals"] = {
        "int8_within_0.5_points": bool(max(abs(d) for d in drops) <= GOAL_DROP_POINTS),
        "executorch_latency_cut_at_least_80%": bool(
            record["latency_cut"]["executorch/fp32"] >= GOAL_LATENCY_CUT
        ),
    }
    return record


def table(results: dict[str, Any]) -> str:
    lines = [
        "| model | params | .pte fp32 / int8 (KiB) | .onnx fp32 / int8 (KiB) | ExecuTorch planned memory fp32 / int8 (KiB) "
        "| ExecuTorch ms fp32 / int8 | ONNX Runtime ms fp32 / int8 | ExecuTorch acc. fp32 → int8 | ONNX Runtime acc. fp32 → int8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, record in results["tasks"].items():
        latency = record["latency_ms"]
        for variant, v in record["variants"].items():
            b, m, a = v["bytes"], v["planned_memory_bytes"], v["test_accuracy"]
            ms = {
                f"{r}/{p}": latency[f"{r}/{p}/{variant}"]
                for r in ("executorch", "onnxruntime")
                for p in ("fp32", "int8")
            }
            lines.append(
                f"| {task} {variant} | {v['params']:,} | {b['executorch_fp32'] / 1024:.1f} / {b['executorch_int8'] / 1024:.1f} "
                f"| {b['onnx_fp32'] / 1024:.1f} / {b['onnx_int8'] / 1024:.1f} "
                f"| {m['executorch_fp32'] / 1024:.1f} / {m['executorch_int8'] / 1024:.1f} "
                f"| {ms['executorch/fp32']:.4f} / {ms['executorch/int8']:.4f} "
                f"| {ms['onnxruntime/fp32']:.4f} / {ms['onnxruntime/int8']:.4f} "
                f"| {100 * a['executorch_fp32']:.2f}% → {100 * a['executorch_int8']:.2f}% "
                f"| {100 * a['onnx_fp32']:.2f}% → {100 * a['onnx_int8']:.2f}% |"
            )
    lines += [
        "",
        "| task | latency cut, compressed vs original (ExecuTorch fp32 / int8; ONNX Runtime fp32 / int8) "
        "| largest int8 drop (points) | goals: int8 ≤ 0.5 points; ExecuTorch cut ≥ 80% |",
        "|---|---|---|---|",
    ]
    for task, record in results["tasks"].items():
        cut = record["latency_cut"]
        drops = [d for v in record["variants"].values() for d in v["int8_drop_points"].values()]
        goals = record["goals"]
        lines.append(
            f"| {task} | {100 * cut['executorch/fp32']:.1f}% / {100 * cut['executorch/int8']:.1f}%; "
            f"{100 * cut['onnxruntime/fp32']:.1f}% / {100 * cut['onnxruntime/int8']:.1f}% "
            f"| {max(drops, key=abs):+.2f} | {'met' if goals['int8_within_0.5_points'] else 'MISSED'}; "
            f"{'met' if goals['executorch_latency_cut_at_least_80%'] else 'MISSED'} |"
        )
    if any("litert/fp32/original" in record["latency_ms"] for record in results["tasks"].values()):
        lines += [
            "",
            "| model | .tflite fp32 (KiB) | LiteRT acc. fp32 | LiteRT ms fp32 | ExecuTorch ms fp32 | ONNX Runtime ms fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for task, record in results["tasks"].items():
            for variant, v in record["variants"].items():
                ms = {
                    r: record["latency_ms"][f"{r}/fp32/{variant}"]
                    for r in ("litert", "executorch", "onnxruntime")
                }
                lines.append(
                    f"| {task} {variant} | {v['bytes']['litert_fp32'] / 1024:.1f} "
                    f"| {100 * v['test_accuracy']['litert_fp32']:.2f}% | {ms['litert']:.4f} "
                    f"| {ms['executorch']:.4f} | {ms['onnxruntime']:.4f} |"
                )
    return "\n".join(lines) + "\n"


def main(arguments: list[str]) -> None:
    tasks, settings = parse(arguments)
    torch.set_num_threads(1)
    results = {
        "settings": settings,
        "tasks": {task: task_record(task, paths, settings) for task, paths in tasks.items()},
    }
    out_dir = Path(settings["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (out_dir / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
