"""`deepiot.compress(...)`: compress your own trained model in one call."""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from deepiot.checks import check_classifier, check_labelled_data
from deepiot.compression import CompressionConfig, CompressionResult, compress_model
from deepiot.compression.schedules import ScheduleConfig
from deepiot.cost.latency import eval_mode
from deepiot.export import PLAN_NAME, export_model, manifest_entries
from deepiot.models import build_model
from deepiot.report import build_report, write_report
from deepiot.runtime import dataset_tensors, model_device, resolve_device
from deepiot.structure import Structure


@dataclass(frozen=True)
class OutputOptions:
    """What the run records beyond the result: how to rebuild the model, and extra manifest/report entries."""

    # how to rebuild the model (`_target_`, input_shape, num_classes, ...): stored in the slicing plan
    model_config: Mapping[str, Any] = field(default_factory=dict)
    # the dataset, as a trained checkpoint's "data" entry (`DatasetBundle.describe()`): name, class_names,
    # normalization, channel_axis; the manifest's input layout, normalisation and class names come from it
    data: Mapping[str, Any] | None = None
    source: str | None = None  # where the original came from (e.g. its checkpoint path), for the manifest
    # extra manifest entries of the export, e.g. the run name
    manifest_extra: Mapping[str, Any] = field(default_factory=dict)
    # extra top-level report entries, e.g. the run name and the training time of the original
    report_extra: Mapping[str, Any] = field(default_factory=dict)
    latency_threads: int | None = 1  # threads for the before/after host latency; None skips it


PLAN_FILE = PLAN_NAME  # the run folder's copy of the slicing plan
EXPORT_DIR = "export"


def compress(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    test_data: Dataset | None = None,
    *,
    example_inputs: Tensor | None = None,
    target: float | None = None,
    latency_ms: float | None = None,
    model_kb: float | None = None,
    peak_activation_kb: float | None = None,
    profile: str | os.PathLike[str] | None = None,
    cost: str | None = None,
    lam: float | None = None,
    baseline: str | None = None,
    schedule: str | ScheduleConfig | None = None,
    max_iterations: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    config: CompressionConfig | None = None,
    structure: Structure | None = None,
    outputs: OutputOptions | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> CompressionResult:
    """Compress a trained classifier with DeepIoT and return the physically smaller model.

    Every keyword left as None keeps the value of `config` (default `CompressionConfig()`: the settings of
    `deepiot-compress`'s default composition, compress=quick, with no size target; `target=0.0198` gives
    exactly the command line's LeNet-5 run, tests/test_defaults.py). With `out_dir`, the run is resumable (rerun the same call) and the folder
    receives report.json/report.md/plots, slicing_plan.json and export/ (TorchScript, ONNX, manifest).

    Args:
        model: trained model returning logits [N, classes]; it is not modified.
        train_data, val_data, test_data: (input, label) datasets, e.g. TensorDatasets; without test_data the
            validation set is also used as the test set.
        example_inputs: one input batch for structure tracing and export (default: the first training sample).
        target: the budget, a fraction of the parameters to keep in (0, 1]: the search is driven to it (a
            dual-ascent price on the expected size), stops once it is met, and the result is fitted to it.
        latency_ms: a latency budget: batch-1 latency (ms) predicted by `profile`'s latency model.
        model_kb: a flash budget: KiB (1024 bytes) of serialised fp32 weights (parameters and buffers).
        peak_activation_kb: a RAM budget: KiB of the largest layer input + output at batch 1 (fp32).
        profile: device_profile.json (or its folder) made by deepiot-profile on the target device, for
            `latency_ms` and cost="latency"; its runtime and threads must be `config.latency_profile`'s
            (default ONNX Runtime, 1 thread).
        cost: resource cost in the reward ("params", "macs", "activation_bytes", "model_bytes" or registered).
        lam: weight λ of the cost in the reward (0 = the paper).
        baseline: "ema" (the paper) or "learned" (value critic).
        schedule: "paper", "guarded" or a ScheduleConfig.
        max_iterations: compressor-critic iterations at most.
        seed: random seed of the loop (same seed → same result).
        config: full settings (see `CompressionConfig`); the keywords above override its fields.
        structure: the model's groups, for models that need declared groups.
        outputs: model description, extra manifest/report entries, latency threads (see OutputOptions).
        progress: show progress bars.
        device: where compression runs: "auto" | "cpu" | "cuda" | "cuda:N" | "mps"; None: the model's device.
            The sliced model comes back on it; the checks, the report's host latency and the export use a
            CPU copy.

    Returns:
        CompressionResult(sliced_model, plan, report).

    Example — a custom sensor model on [N, T=128, C=6] windows:

        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from deepiot.api import compress
        >>> class SensorNet(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv1d(6, 32, 5, padding=2)
        ...         self.gru = nn.GRU(32, 48, batch_first=True)
        ...         self.fc = nn.Linear(48, 4)
        ...     def forward(self, x):                      # x: [N, 128, 6]
        ...         h = torch.relu(self.conv(x.transpose(1, 2)))  # [N, 32, 128]
        ...         out, _ = self.gru(h.transpose(1, 2))  # [N, 128, 48]
        ...         return self.fc(out.mean(dim=1))
        >>> x, y = torch.randn(512, 128, 6), torch.randint(0, 4, (512,))
        >>> data = TensorDataset(x, y)
        >>> result = compress(SensorNet(), data, data, target=0.3, max_iterations=200,
        ...                           out_dir="outputs/my_sensor_net")  # doctest: +SKIP
        >>> result.sliced_model, result.report["cost"]["left"]["params"]  # doctest: +SKIP
    """
    config = _with_overrides(
        config or CompressionConfig(),
        target=target,
        latency_ms=latency_ms,
        model_kb=model_kb,
        peak_activation_kb=peak_activation_kb,
        profile=profile,
        cost=cost,
        lam=lam,
        baseline=baseline,
        schedule=schedule,
        max_iterations=max_iterations,
        seed=seed,
    )
    config.check_latency_profile()  # a latency budget without a usable profile: refused before any work
    outputs = outputs or OutputOptions()
    device = model_device(model) if device is None else resolve_device(device)
    host_model = on_host(model)
    test_data = val_data if test_data is None else test_data
    train_inputs = check_model_and_data(host_model, {"train": train_data, "val": val_data, "test": test_data})
    if example_inputs is None:
        example_inputs = train_inputs[:1]
    example_inputs = example_inputs.cpu()  # intended: checks, report and export run on the host
    check_classifier(host_model, example_inputs, "example_inputs")
    result = compress_model(
        model,
        train_data,
        val_data,
        test_data,
        config,
        run_dir=out_dir,
        structure=structure,
        model_config=rebuild_config(host_model, example_inputs, outputs.model_config),
        progress=progress,
        device=device,
    )
    host_result = result._replace(sliced_model=on_host(result.sliced_model))
    report = build_report(
        host_model,
        host_result.sliced_model,
        result.report,
        example_inputs,
        latency_threads=outputs.latency_threads,
        extra=outputs.report_extra,
    )
    report["config"] = config.to_dict()
    if out_dir is not None:
        save_outputs(host_result, report, example_inputs, Path(out_dir), outputs)
    return CompressionResult(result.sliced_model, result.plan, report)


def on_host(model: nn.Module) -> nn.Module:
    """`model` itself when it is on the CPU, else a CPU copy (intended: for checks, host latency, export)."""
    return model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()


def check_model_and_data(model: nn.Module, splits: Mapping[str, Dataset]) -> Tensor:
    """Refuse a non-classifier model or bad splits before any work (see `deepiot.checks`); the train inputs."""
    tensors = {split: _raw_tensors(dataset, split) for split, dataset in splits.items()}
    train_inputs = tensors["train"][0].float()
    classes = check_classifier(model, train_inputs)
    for split, (inputs, labels) in tensors.items():
        check_labelled_data(split, inputs, labels, classes, tuple(train_inputs.shape[1:]))
    return train_inputs


def _raw_tensors(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    """(inputs, labels) as stored (labels not yet cast to int64, so non-integer labels can be caught)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2 and len(tensors[0]) > 0:
        return tensors[0], tensors[1]
    return dataset_tensors(dataset, split)


def rebuild_config(model: nn.Module, example_inputs: Tensor, given: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's model_config: `given`, else the model's class path, plus the per-sample input shape.

    Without a given config, `_target_` is the class's import path when that path, with no arguments, rebuilds
    the same network (same modules, and with `model`'s weights loaded the same outputs on `example_inputs`);
    otherwise it is left out, with a warning, and `build_sliced_model` later says exactly what is missing.
    """
    config = dict(given)
    config.setdefault("input_shape", list(example_inputs.shape[1:]))
    if "_target_" not in given:
        target = f"{type(model).__module__}.{type(model).__qualname__}"
        problem = _rebuild_problem(model, example_inputs, {**config, "_target_": target})
        if problem is None:
            config["_target_"] = target
        else:
            warnings.warn(
                f"deepiot.compress: the slicing plan will not be able to rebuild {type(model).__name__} by "
                f"itself ({problem}); pass outputs=OutputOptions(model_config={{'_target_': "
                f"'<package.module.Class>', <constructor arguments>}}) to make it self-contained.",
                stacklevel=3,
            )
    return config


def _rebuild_problem(model: nn.Module, example_inputs: Tensor, config: dict[str, Any]) -> str | None:
    """Why `build_model(config)` does not rebuild `model`'s network, or None when it does."""
    if "<locals>" in config["_target_"]:
        return f"{config['_target_']} is defined inside a function, so it cannot be imported"
    try:
        with torch.random.fork_rng(devices=[]):  # the trial build must not move the caller's random stream
            rebuilt = build_model(config)
    except Exception as error:  # the class cannot be imported or needs constructor arguments
        return f"{config['_target_']}(): {' '.join(str(error).split())[:300]}"
    different = f"{config['_target_']}() without arguments builds a different network"
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if repr(rebuilt) != repr(model) or {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} != own:
        return different
    rebuilt.load_state_dict(model.state_dict())
    with eval_mode(model), eval_mode(rebuilt), torch.no_grad():
        if not torch.equal(rebuilt(example_inputs), model(example_inputs)):
            return different
    return None


def save_outputs(
    result: CompressionResult,
    report: dict[str, Any],
    example_inputs: Tensor,
    out_dir: Path,
    outputs: OutputOptions,
) -> None:
    """Write the report, the slicing plan, and the TorchScript/ONNX export of the sliced model (its manifest
    from `manifest_entries` plus `outputs.manifest_extra`)."""
    result.plan.save(out_dir / PLAN_FILE)
    plan_bytes = (out_dir / PLAN_FILE).read_bytes()
    metrics = {
        "test_accuracy": report["accuracy"]["compressed_test"],
        "val_accuracy": report["accuracy"]["compressed_val"],
        "original_test_accuracy": report["accuracy"]["original_test"],
    }
    description = manifest_entries(
        result.plan.model_config, metrics, outputs.data, sliced=True, source=outputs.source
    )
    exported = export_model(
        result.sliced_model,
        example_inputs,
        out_dir / EXPORT_DIR,
        manifest_extra={**description, **outputs.manifest_extra},
        extra_files={PLAN_FILE: plan_bytes},
    )
    report["export"] = {
        "paths": {kind: str(path) for kind, path in exported.paths.items()},
        "max_abs_diff": exported.max_abs_diff,
    }
    report["files"] = {kind: str(path) for kind, path in write_report(report, out_dir).items()}


def _with_overrides(config: CompressionConfig, **overrides: Any) -> CompressionConfig:
    """`config` with the keyword shortcuts of `compress` applied (None = keep)."""
    loop, critic, schedule = config.loop, config.critic, config.schedule
    values = {key: value for key, value in overrides.items() if value is not None}
    loop = dataclasses.replace(
        loop,
        target_params=values.get("target", loop.target_params),
        target_latency_ms=values.get("latency_ms", loop.target_latency_ms),
        target_model_kb=values.get("model_kb", loop.target_model_kb),
        target_peak_activation_kb=values.get("peak_activation_kb", loop.target_peak_activation_kb),
        max_iterations=values.get("max_iterations", loop.max_iterations),
        seed=values.get("seed", loop.seed),
    )
    tuning = dataclasses.replace(config.finetune, seed=values.get("seed", config.finetune.seed))
    critic = dataclasses.replace(
        critic,
        cost=values.get("cost", critic.cost),
        lam=values.get("lam", critic.lam),
        baseline=values.get("baseline", critic.baseline),
    )
    chosen = values.get("schedule", schedule)
    if isinstance(chosen, str):
        chosen = dataclasses.replace(schedule, name=chosen)
    profile = config.latency_profile
    if "profile" in values:
        profile = dataclasses.replace(profile, profile=str(values["profile"]))
    return dataclasses.replace(
        config, loop=loop, critic=critic, schedule=chosen, finetune=tuning, latency_profile=profile
    )
