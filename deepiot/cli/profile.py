"""`deepiot-profile`: profile this machine's runtime, fit the device latency model, write device_profile.json.

Examples:
    deepiot-profile runtime=onnxruntime threads=1 out_dir=experiments/device/host_ort_1thread
    deepiot-profile runtime=executorch architectures=[lenet5] out_dir=experiments/device/host_executorch_1thread
    deepiot-profile stage=suite out_dir=pi && python deepiot/device/ort_profile.py pi/suite  # on the device
    deepiot-profile stage=fit out_dir=pi
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.device.ort_profile import SUITE_NAME, TIMINGS_NAME
from deepiot.device.profile import (
    PROFILE_NAME,
    ProfileConfig,
    ProfileError,
    fit_profile,
    profile_device,
    write_profile,
)

STAGES = ("all", "suite", "fit")


def run_profile(cfg: DictConfig) -> dict[str, Any]:
    """Run `cfg.stage` of the profiling pipeline into `cfg.out_dir`; returns the profile (or the suite path)."""
    if cfg.stage not in STAGES:
        raise ProfileError(f"stage must be one of {STAGES}, got {cfg.stage!r}.")
    config = ProfileConfig(**{field.name: cfg[field.name] for field in fields(ProfileConfig)})
    out_dir = checked_out_dir(cfg.out_dir)
    if cfg.stage == "all":
        if config.runtime == "executorch":
            from deepiot.edge import time_executorch_suite

            return profile_device(config, out_dir, time_suite=time_executorch_suite)
        return profile_device(config, out_dir)
    suite_dir = out_dir / "suite"
    if cfg.stage == "suite":
        from deepiot.device.suite import build_suite, write_onnx_suite

        entries = build_suite(
            config.seed, config.per_kind, config.per_model, config.per_reference_layer, config.architectures
        )
        return {"suite": str(write_onnx_suite(entries, suite_dir, asdict(config)))}
    for name in (SUITE_NAME, TIMINGS_NAME):
        if not (suite_dir / name).is_file():
            raise ProfileError(
                f"stage=fit needs {suite_dir / name}; write the suite with stage=suite and time it "
                f"with python deepiot/device/ort_profile.py {suite_dir}."
            )
    suite = json.loads((suite_dir / SUITE_NAME).read_text())
    timings = json.loads((suite_dir / TIMINGS_NAME).read_text())
    return write_profile(fit_profile(suite["entries"], timings, config), out_dir)


def checked_out_dir(value: Any) -> Path:
    """`out_dir` as a Path, refused (ProfileError) when it is not a string or a file blocks the folder."""
    if not isinstance(value, str) or not value:
        raise ProfileError(f"config value out_dir={value!r} is invalid: expected a folder path (a string).")
    out_dir = Path(value)
    blocking = next((path for path in (out_dir, *out_dir.parents) if path.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ProfileError(
            f"out_dir {out_dir} cannot be created: {blocking} is an existing file, not a folder. Expected a "
            "folder (existing or new) for device_profile.json, fit.png and suite/; pass another out_dir=..."
        )
    return out_dir


def describe(result: dict[str, Any], out_dir: str) -> str:
    """Where the profile went and its fit quality against the goals."""
    if "suite" in result:
        return f"[deepiot-profile] wrote the ONNX suite {result['suite']}"
    quality = result["fit_quality"]
    lines = [f"[deepiot-profile] wrote {Path(out_dir) / PROFILE_NAME} and fit.png"]
    for name in ("heldout_layers", "sliced_models"):
        q = quality[name]
        lines.append(
            f"  {name}: median |rel. error| {q['median_abs_rel_error']:.1%}, Spearman {q['spearman']:.3f} "
            f"(n={q['count']})"
        )
    lines.append(f"  goals (≤ 10%, ≥ 0.9 per model): {'met' if quality['meets_goals'] else 'NOT met'}")
    return "\n".join(lines)


@checked_command_line("deepiot-profile", "profile")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="profile")
def main(cfg: DictConfig) -> None:
    """Profile, fit and print the fit quality; bad settings end with their message and exit status 2."""
    with reported_errors("deepiot-profile"):
        result = run_profile(cfg)
    print(describe(result, cfg.out_dir))


if __name__ == "__main__":
    main()
