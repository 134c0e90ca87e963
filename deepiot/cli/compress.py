"""`deepiot-compress`: compress a trained original with DeepIoT (train it first when it is missing).

Examples:
    deepiot-compress                                    # LeNet-5/MNIST, quick schedule → outputs/compress/lenet5_mnist
    deepiot-compress experiment=deepsense_hapt_activity compress=paper
    deepiot-compress -m critic.lam=0,0.1 cost=macs       # a sweep: one run folder per override set
    deepiot-compress compress.target_params=null compress.target_latency_ms=0.02 \
        cost.profile=experiments/device/host_ort_1thread/device_profile.json   # a latency budget on this machine

The run folder receives compress_state.pt (resume state: rerunning the same command resumes), report.json,
report.md, kept_elements.png, progress.png, slicing_plan.json, finetuned_model.pt (the fine-tuned sliced
weights the plan refers to) and export/ (TorchScript, ONNX, manifest).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from deepiot.api import OutputOptions, compress
from deepiot.checkpoint import load_trained_model, save_checkpoint
from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.cli.train import ensure_trained
from deepiot.compression import STATE_FILE, CompressionConfig, CompressionResult
from deepiot.compression.budget import attach_profile, budget_fractions
from deepiot.compression.state import read_saved_state
from deepiot.export import SLICED_MODEL_KIND
from deepiot.report import REPORT_JSON
from deepiot.runtime import resolve_device
from deepiot.structure import Structure
from deepiot.train import build_fitting_model, check_train_config, describe_model, load_bundle, show_progress
from deepiot.utils import ConfigError, atomic_write, remove_stale_temporaries

log = logging.getLogger(__name__)

FINETUNED_MODEL = "finetuned_model.pt"
# keys of the compress group that are not loop settings
REPORT_KEYS = ("latency_threads",)


def compression_config(cfg: DictConfig) -> CompressionConfig:
    """Build and validate the compression settings from the Hydra groups; ConfigError names a bad value.

    Each group fills its dataclass (`CompressionConfig.from_groups`); only the two settings kept outside the
    dataclasses are handled here: compress.latency_threads (for the report) and cost.name (critic.cost).
    """
    groups = OmegaConf.to_container(cfg, resolve=True)
    check_report_settings(groups)
    loop = {key: value for key, value in groups["compress"].items() if key not in REPORT_KEYS}
    loop.setdefault("seed", groups["seed"])  # compress.seed defaults to ${seed} in configs/compress/*.yaml
    critic = {**groups["critic"], "cost": groups["cost"]["name"]}
    return CompressionConfig.from_groups({**groups, "compress": loop, "critic": critic})


def check_report_settings(groups: dict[str, Any]) -> None:
    """compress.latency_threads and cost.name, the two settings outside the dataclasses."""
    latency_threads = groups["compress"].get("latency_threads")
    if latency_threads is not None and (type(latency_threads) is not int or latency_threads < 1):
        raise ConfigError(
            f"config value compress.latency_threads={latency_threads!r} is invalid: expected null (skip the "
            "latency measurement) or an integer >= 1."
        )
    if not isinstance(groups["cost"].get("name"), str):
        raise ConfigError(
            f"config value cost.name={groups['cost'].get('name')!r} is invalid: expected a string."
        )
    profile = groups["cost"].get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(
            f"config value cost.profile={profile!r} is invalid: expected null or the path of a "
            "device_profile.json (or its folder) made by deepiot-profile."
        )


def config_device(cfg: DictConfig) -> torch.device:
    """The root `device` setting resolved once (auto → CUDA, then MPS, then CPU); ConfigError if absent here."""
    try:
        return resolve_device(cfg.device)
    except ValueError as err:
        raise ConfigError(f"config value device={cfg.device!r} cannot be used: {err}") from err


def run_compress(cfg: DictConfig) -> dict[str, Any]:
    """Compress the experiment's trained original into `cfg.paths.output_dir`; returns the report.

    Every setting, the run folder's saved state and the data are checked before the original is trained. A run
    folder that already holds a finished run with the same compression config (report.json, rewritten last,
    and finetuned_model.pt) is skipped: its report is returned, so a rerun sweep redoes no finished job.
    """
    check_train_config(cfg)
    config = compression_config(cfg)
    config.check_latency_profile()  # before the original is trained or loaded
    device = config_device(cfg)
    out_dir = Path(cfg.paths.output_dir)
    finished = finished_report(out_dir, config)
    if finished is not None:
        log.info("%s holds a finished run with this config: skipped", out_dir)
        return finished
    read_saved_state(out_dir / STATE_FILE, config)  # a finished/partial run with other settings: refuse now
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    bundle = load_bundle(cfg)
    check_enough_data(bundle, config)
    check_budgets_on_architecture(cfg, bundle, config)
    remove_stale_temporaries(out_dir)
    original_path = ensure_trained(cfg)
    model, checkpoint = load_trained_model(original_path, device)
    result = compress(
        model,
        bundle.train,
        bundle.val,
        bundle.test,
        config=config,
        out_dir=out_dir,
        outputs=output_options(cfg, checkpoint, original_path),
        progress=show_progress(cfg.progress_bar),
        device=device,
    )
    save_finetuned_model(out_dir, checkpoint, result)
    publish_report_last(out_dir, result.report)
    return result.report


def check_budgets_on_architecture(cfg: DictConfig, bundle: Any, config: CompressionConfig) -> None:
    """BudgetError, before the original is trained or loaded, for a budget the model's architecture cannot meet
    (already met by the original, below the smallest structure, below the min_kept floor): the costs depend on
    the layers' shapes, not on their weights, so an untrained model of `cfg.model` answers what the trained one
    would (`budget_fractions`, the search's own check)."""
    model = build_fitting_model(describe_model(cfg, bundle), bundle)
    structure = Structure.from_model(model, bundle.train[:1][0])
    attach_profile(structure, model, config.latency_profile, config.latency_needed_by())
    budget_fractions(structure, dataclasses.asdict(config.loop))


def check_enough_data(bundle: Any, config: CompressionConfig) -> None:
    """The training split must hold at least one compression batch (checked before the original is trained)."""
    if len(bundle.train) < config.loop.batch_size:
        raise ConfigError(
            f"the training split of {bundle.name!r} has {len(bundle.train)} samples, fewer than one batch "
            f"(compress.batch_size={config.loop.batch_size}): expected at least {config.loop.batch_size}. Raise "
            "data.dataset.limit or lower compress.batch_size."
        )


def publish_report_last(out_dir: Path, report: dict[str, Any]) -> None:
    """Rewrite report.json after every other file, so that its time stamp marks a finished folder."""
    report.setdefault("files", {})["finetuned_model"] = str(out_dir / FINETUNED_MODEL)
    atomic_write(out_dir / REPORT_JSON, lambda file: file.write(json.dumps(report, indent=2) + "\n"))


def finished_report(out_dir: Path, config: CompressionConfig) -> dict[str, Any] | None:
    """The report of a finished run in `out_dir` with the same compression config, else None."""
    report_path, model_path = out_dir / REPORT_JSON, out_dir / FINETUNED_MODEL
    if not (report_path.is_file() and model_path.is_file()):
        return None
    report = json.loads(report_path.read_text())
    return report if report.get("config") == config.to_dict() else None


def output_options(cfg: DictConfig, checkpoint: dict[str, Any], original_path: Path) -> OutputOptions:
    """Model description, manifest entries and report entries of a run on the original `checkpoint`
    (shared by deepiot-compress and deepiot-baseline)."""
    return OutputOptions(
        model_config=checkpoint["model_config"],
        data=checkpoint["data"],
        source=str(original_path),
        manifest_extra={"name": cfg.name},
        report_extra={
            "name": cfg.name,
            "original_training_wall_time_s": checkpoint["metrics"].get("wall_time_s"),
        },
        latency_threads=cfg.compress.latency_threads,
    )


def save_finetuned_model(out_dir: Path, original: dict[str, Any], result: CompressionResult) -> None:
    """Write the fine-tuned sliced model's weights with its slicing plan as a "sliced_model" checkpoint, so
    that `deepiot-export checkpoint=<it>` rebuilds exactly the exported model."""
    report = result.report
    payload = {
        "kind": SLICED_MODEL_KIND,
        "slicing_plan": result.plan.to_dict(),
        "model_config": original["model_config"],
        "state_dict": result.sliced_model.state_dict(),
        "metrics": {
            "test_accuracy": report["accuracy"]["compressed_test"],
            "val_accuracy": report["accuracy"]["compressed_val"],
        },
        "config": original["config"],
        "data": original["data"],
    }
    save_checkpoint(payload, out_dir / FINETUNED_MODEL)


@checked_command_line("deepiot-compress", "config")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Compress, print a one-line summary, and return the compressed model's validation accuracy."""
    with reported_errors("deepiot-compress"):
        report = run_compress(cfg)
    left, accuracy = report["cost"]["left"], report["accuracy"]
    predicted = report.get("budgets", {}).get("compressed", {})
    latency = f"predicted latency {predicted['latency_ms']:.4f} ms  " if "latency_ms" in predicted else ""
    print(
        f"[deepiot-compress] {cfg.name}: params left {100 * left['params']:.2f}%  MACs left {100 * left['macs']:.2f}%  "
        f"{latency}test accuracy {accuracy['original_test']:.4f} → {accuracy['compressed_test']:.4f}  "
        f"({report['stop_reason']})  report {cfg.paths.output_dir}/report.md"
    )
    return accuracy["compressed_val"]


if __name__ == "__main__":
    main()
