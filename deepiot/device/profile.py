"""`profile_device`: time the suite on this machine, fit the latency model, validate it, write the profile.

Stages (each usable alone, so the timing can run on another device):
1. `build_suite` + `write_onnx_suite`: ONNX files and `suite.json` (needs torch);
2. timing: `ort_profile.py` (numpy + onnxruntime only), `time_torch_suite` (PyTorch eager) or
   `time_executorch_suite` (each configuration lowered to an XNNPACK .pte, timed in ExecuTorch's runtime);
3. `fit_profile`: per-kind layer models on 75% of the layer configurations, validated on the other 25%;
   the whole-model overhead calibrated on 3 slicings per reference model, validated on the rest;
   the result is `device_profile.json` (measurements, coefficients, fit quality) and `fit.png`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepiot.device import ort_profile
from deepiot.device.latency_model import fit_layers, fit_quality
from deepiot.errors import DeepIoTError

PROFILE_NAME = "device_profile.json"
PLOT_NAME = "fit.png"
PROFILE_FORMAT = "deepiot-device-profile/1"
RUNTIMES = ("onnxruntime", "torch", "executorch")
REFERENCE_ARCHITECTURES = (
    "lenet5",
    "deepsense",
    "lstm",
)  # sliced in the suite; their layer kinds are profiled
STATISTICS = ("median", "p10")
# what a profile must hold to price latency: top-level objects and their keys
PROFILE_KEYS = {"environment": ("runtime", "threads"), "latency_model": ("kinds", "overhead")}
GOALS = {"median_abs_rel_error": 0.10, "spearman": 0.90}
CALIBRATION_SLICINGS = (1, 2, 3)  # per reference model: fit the overhead; all other slicings validate


class ProfileError(DeepIoTError, ValueError):
    """Bad profiling settings, or a suite / timings folder that does not fit together."""


@dataclass(frozen=True)
class ProfileConfig:
    """How much to profile and how robustly: configurations, warm-up, repeats, interleaved rounds."""

    runtime: str = "onnxruntime"
    threads: int = 1
    seed: int = 0
    per_kind: int = 60  # random configurations per layer kind
    per_model: int = 12  # slicings per reference model (the first keeps everything)
    per_reference_layer: int = 4  # each reference-model layer timed alone at this many random widths
    # reference models to slice; only their layer kinds are profiled (lenet5: linear, conv2d)
    architectures: tuple[str, ...] = REFERENCE_ARCHITECTURES
    warmup: int = 20
    repeats: int = 300
    rounds: int = 10
    heldout_fraction: float = 0.25
    statistic: str = "median"  # fitted and validated per configuration: "median", or "p10" on a busy host

    def __post_init__(self) -> None:
        for name in (
            "threads",
            "seed",
            "per_kind",
            "per_model",
            "per_reference_layer",
            "warmup",
            "repeats",
            "rounds",
        ):
            value = getattr(self, name)
            if type(value) is not int:
                raise ProfileError(f"config value {name}={value!r} has the wrong type: expected an integer.")
        if isinstance(self.heldout_fraction, bool) or not isinstance(self.heldout_fraction, (int, float)):
            raise ProfileError(
                f"config value heldout_fraction={self.heldout_fraction!r} has the wrong type: expected a number."
            )
        if self.runtime not in RUNTIMES:
            raise ProfileError(
                f"runtime must be one of {RUNTIMES}, got {self.runtime!r}: the runtime whose batch-1 latency "
                "the profile predicts (onnxruntime: ONNX Runtime's CPU provider; torch: PyTorch eager; "
                "executorch: ExecuTorch's runtime with XNNPACK, needs the [edge] extra)."
            )
        names = None if isinstance(self.architectures, str) else list(self.architectures)
        if not names or any(name not in REFERENCE_ARCHITECTURES for name in names):
            raise ProfileError(
                f"config value architectures={self.architectures!r} is invalid: expected a non-empty list of "
                f"reference models among {list(REFERENCE_ARCHITECTURES)}, e.g. architectures=[lenet5]; the "
                "profile covers their layer kinds only."
            )
        object.__setattr__(self, "architectures", tuple(dict.fromkeys(names)))
        if self.runtime == "executorch" and self.threads != 1:
            raise ProfileError(
                f"runtime=executorch profiles with threads=1 only, got threads={self.threads}: deepiot runs "
                "ExecuTorch's XNNPACK threadpool with one thread (as every deployed model it checks and times)."
            )
        if self.threads < 1 or self.warmup < 0 or not 1 <= self.rounds <= self.repeats:
            raise ProfileError(
                f"need threads >= 1, warmup >= 0 and 1 <= rounds <= repeats, got threads={self.threads}, "
                f"warmup={self.warmup}, rounds={self.rounds}, repeats={self.repeats}."
            )
        if self.per_kind < 8 or self.per_model < max(CALIBRATION_SLICINGS) + 2:
            raise ProfileError(
                f"need per_kind >= 8 and per_model >= {max(CALIBRATION_SLICINGS) + 2} to fit "
                f"and validate, got {self.per_kind} and {self.per_model}."
            )
        if self.statistic not in STATISTICS:
            raise ProfileError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}.")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ProfileError(f"heldout_fraction must lie in (0, 0.5), got {self.heldout_fraction}.")


def profile_device(
    config: ProfileConfig,
    out_dir: str | Path,
    time_suite: Callable[[Sequence[Any], ProfileConfig], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the suite, time it on this machine with `config.runtime`, fit and write the profile.

    runtime=executorch times with `deepiot.edge.time_executorch_suite`, which lives above this layer: pass it as
    `time_suite` (deepiot-profile does)."""
    from deepiot.device.suite import build_suite, write_onnx_suite

    out_dir = Path(out_dir)
    entries = build_suite(
        config.seed, config.per_kind, config.per_model, config.per_reference_layer, config.architectures
    )
    descriptions = [entry.describe() for entry in entries]
    if config.runtime == "onnxruntime":
        suite_dir = out_dir / "suite"
        write_onnx_suite(entries, suite_dir, asdict(config))
        timings = ort_profile.profile_folder(
            suite_dir, config.threads, config.warmup, config.repeats, config.rounds
        )
        (suite_dir / ort_profile.TIMINGS_NAME).write_text(json.dumps(timings, indent=1))
    elif config.runtime == "executorch":
        if time_suite is None:
            raise ProfileError(
                "runtime=executorch needs the ExecuTorch timer: call profile_device(config, out_dir, "
                "time_suite=deepiot.edge.time_executorch_suite), or run deepiot-profile runtime=executorch."
            )
        timings = time_suite(entries, config)
    else:
        timings = time_torch_suite(entries, config)
    return write_profile(fit_profile(descriptions, timings, config), out_dir)


def time_torch_suite(entries: Sequence[Any], config: ProfileConfig) -> dict[str, Any]:
    """Time every suite module in PyTorch eager mode (batch 1, inference mode), interleaved like ORT."""
    import torch

    from deepiot.cost.latency import time_interleaved, torch_threads

    calls = {}
    for entry in entries:
        module, inputs = entry.module.eval(), entry.inputs
        calls[entry.id] = lambda module=module, inputs=inputs: module(*inputs)
    with torch_threads(config.threads), torch.inference_mode():
        stats = time_interleaved(calls, config.warmup, config.repeats, config.rounds)
    return timings_document(stats, config, "torch", torch.__version__)


def timings_document(
    stats: Mapping[str, Any], config: ProfileConfig, runtime: str, runtime_version: str, **environment: str
) -> dict[str, Any]:
    """The timings document of an in-process runtime, in ort_profile.py's layout."""
    import platform

    timings = {
        key: {
            "median_ms": s.median_ms,
            "p10_ms": s.p10_ms,
            "p90_ms": s.p90_ms,
            "repeats": s.repeats,
            "warmup": config.warmup,
        }
        for key, s in stats.items()
    }
    made_on = {
        "runtime": runtime,
        "runtime_version": runtime_version,
        **environment,
        "threads": config.threads,
        "machine": platform.machine(),
        "system": platform.platform(),
    }
    settings = {"warmup": config.warmup, "repeats": config.repeats, "rounds": config.rounds}
    return {"environment": made_on, "settings": settings, "timings": timings}


def fit_profile(
    descriptions: Sequence[Mapping[str, Any]], timings: Mapping[str, Any], config: ProfileConfig
) -> dict[str, Any]:
    """Fit and validate the latency model; the profile document (measurements, model, fit quality)."""
    measured = timings["timings"]
    missing = [entry["id"] for entry in descriptions if entry["id"] not in measured]
    if missing:
        raise ProfileError(
            f"the timings lack {len(missing)} suite entries (e.g. {missing[:3]}); time the "
            "same suite folder the profile is fitted from."
        )
    layers = [entry for entry in descriptions if entry["kind"] != "model"]
    models = [entry for entry in descriptions if entry["kind"] == "model"]
    heldout = _heldout_mask(len(layers), config)
    key = f"{config.statistic}_ms"
    layer_times = np.array([measured[entry["id"]][key] for entry in layers])
    train_rows = [entry["layers"][0] for entry, out in zip(layers, heldout, strict=True) if not out]
    latency_model = fit_layers(train_rows, layer_times[~heldout])
    calibration = np.array([int(entry["id"].rsplit("_", 1)[1]) in CALIBRATION_SLICINGS for entry in models])
    model_times = np.array([measured[entry["id"]][key] for entry in models])
    latency_model = latency_model.with_overhead(
        [entry["layers"] for entry, chosen in zip(models, calibration, strict=True) if chosen],
        model_times[calibration],
    )
    layer_pred = np.array(
        [float(latency_model.layer_ms(e["kind"], e["layers"][0]["features"])) for e in layers]
    )
    model_pred = np.array([float(latency_model.model_ms(entry["layers"])) for entry in models])
    quality = _quality(
        layers, layer_pred, layer_times, heldout, models, model_pred, model_times, ~calibration
    )
    rows = [
        _measurement(entry, measured, p, out)
        for entry, p, out in zip(layers, layer_pred, heldout, strict=True)
    ]
    rows += [
        _measurement(entry, measured, p, not cal)
        for entry, p, cal in zip(models, model_pred, calibration, strict=True)
    ]
    return {
        "format": PROFILE_FORMAT,
        "environment": timings["environment"],
        "settings": {**asdict(config), **timings.get("settings", {})},
        "latency_model": latency_model.to_dict(),
        "fit_quality": quality,
        "measurements": rows,
    }


def _heldout_mask(count: int, config: ProfileConfig) -> np.ndarray:
    rng = np.random.default_rng(config.seed + 1)
    mask = np.zeros(count, dtype=bool)
    mask[rng.choice(count, size=max(1, int(round(config.heldout_fraction * count))), replace=False)] = True
    return mask


def _measurement(
    entry: Mapping[str, Any], measured: Mapping[str, Any], predicted: float, validation: bool
) -> dict:
    keep = ("kind", "architecture", "geometry", "kept_counts")
    return {
        "id": entry["id"],
        **{key: entry[key] for key in keep if key in entry},
        "validation": bool(validation),
        "predicted_ms": float(predicted),
        **measured[entry["id"]],
    }


def _quality(
    layers: Sequence[Mapping[str, Any]],
    layer_pred: np.ndarray,
    layer_times: np.ndarray,
    heldout: np.ndarray,
    models: Sequence[Mapping[str, Any]],
    model_pred: np.ndarray,
    model_times: np.ndarray,
    validation: np.ndarray,
) -> dict[str, Any]:
    kinds = np.array([entry["kind"] for entry in layers])
    architectures = np.array([entry["architecture"] for entry in models])
    per_kind = {
        kind: fit_quality(layer_pred[heldout & (kinds == kind)], layer_times[heldout & (kinds == kind)])
        for kind in sorted(set(kinds))
    }
    per_model = {
        arch: fit_quality(
            model_pred[validation & (architectures == arch)],
            model_times[validation & (architectures == arch)],
        )
        for arch in sorted(set(architectures))
    }
    summary = {
        "heldout_layers": fit_quality(layer_pred[heldout], layer_times[heldout]),
        "sliced_models": fit_quality(model_pred[validation], model_times[validation]),
    }
    worst_spearman = min(quality["spearman"] for quality in per_model.values())
    meets = (
        summary["heldout_layers"]["median_abs_rel_error"] <= GOALS["median_abs_rel_error"]
        and summary["sliced_models"]["median_abs_rel_error"] <= GOALS["median_abs_rel_error"]
        and worst_spearman >= GOALS["spearman"]
    )
    return {
        **summary,
        "heldout_layers_by_kind": per_kind,
        "sliced_models_by_architecture": per_model,
        "goals": GOALS,
        "meets_goals": bool(meets),
    }


def write_profile(profile: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write `device_profile.json` and the predicted-vs-measured plot `fit.png` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROFILE_NAME).write_text(json.dumps(profile, indent=1))
    plot_fit(profile, out_dir / PLOT_NAME)
    return dict(profile)


def load_profile(path: str | Path) -> dict[str, Any]:
    """A `device_profile.json` (or the folder holding one), checked for its format."""
    path = Path(path)
    path = path / PROFILE_NAME if path.is_dir() else path
    if not path.is_file():
        raise ProfileError(f"no device profile at {path}; make one with deepiot-profile.")
    try:
        profile = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProfileError(
            f"{path} is not valid JSON ({err}): expected the device_profile.json written by deepiot-profile; "
            "it may be truncated: profile again."
        ) from err
    if not isinstance(profile, dict):
        raise ProfileError(
            f"{path} holds a JSON {type(profile).__name__}, not a {PROFILE_FORMAT} document: expected the "
            "JSON object written by deepiot-profile."
        )
    if profile.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{path} is not a {PROFILE_FORMAT} document (format {profile.get('format')!r}).")
    missing = []
    for key, inner_keys in PROFILE_KEYS.items():
        if not isinstance(profile.get(key), dict):
            missing.append(key)
        else:
            missing += [f"{key}.{inner}" for inner in inner_keys if inner not in profile[key]]
    if missing:
        raise ProfileError(
            f"{path} is an incomplete {PROFILE_FORMAT} document: it lacks {', '.join(missing)}. Expected the "
            "whole device_profile.json written by deepiot-profile (environment, latency_model, ...): profile again."
        )
    return profile


def _plot_label(row: Mapping[str, Any]) -> str:
    return f"sliced {row['architecture']}" if "architecture" in row else f"{row['kind']} layer"


def plot_fit(profile: Mapping[str, Any], path: Path) -> None:
    """Predicted vs measured latency (log-log) for the validation points, with the ±10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in profile["measurements"] if row["validation"]]
    statistic = profile["settings"].get("statistic", "median")
    key = f"{statistic}_ms"
    figure, axis = plt.subplots(figsize=(6.4, 5.6))
    for group in sorted({_plot_label(row) for row in rows}):
        chosen = [row for row in rows if _plot_label(row) == group]
        is_model = group.startswith("sliced")
        axis.scatter(
            [r[key] for r in chosen],
            [r["predicted_ms"] for r in chosen],
            s=36 if is_model else 10,
            marker="o" if is_model else ".",
            label=group,
        )
    values = [value for row in rows for value in (row[key], row["predicted_ms"])]
    line = np.geomspace(min(values) * 0.8, max(values) * 1.25, 50)
    axis.plot(line, line, color="black", linewidth=0.8)
    axis.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.2, label="±10%")
    axis.set(
        xscale="log",
        yscale="log",
        xlabel=f"measured latency, {statistic} of calls (ms)",
        ylabel="predicted latency (ms)",
    )
    layers, models = profile["fit_quality"]["heldout_layers"], profile["fit_quality"]["sliced_models"]
    environment = profile["environment"]
    axis.set_title(
        f"{environment['runtime']} {environment['runtime_version']}, {environment['threads']} thread(s)\n"
        f"held-out layers: MdAPE {layers['median_abs_rel_error']:.1%}, ρ {layers['spearman']:.3f}; "
        f"sliced models: MdAPE {models['median_abs_rel_error']:.1%}, ρ {models['spearman']:.3f}",
        fontsize=9,
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
