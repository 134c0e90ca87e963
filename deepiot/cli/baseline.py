"""`deepiot-baseline`: compress a trained original with a baseline method (or DeepIoT) and the shared
fine-tuning recipe; the same artefacts as `deepiot-compress` (root config: configs/baseline.yaml).

Examples:
    deepiot-baseline                                             # LeNet-5/MNIST, magnitude, 2% of the params
    deepiot-baseline method=torch_pruning budget.fraction=0.035
    deepiot-baseline method=unstructured finetune.distill_weight=0.5
    deepiot-baseline -m method=magnitude,random budget.fraction=0.01,0.02
    deepiot-baseline budget.cost=model_kb budget.limit=32          # at most 32 KiB of fp32 weights
    deepiot-baseline budget.cost=latency_ms budget.limit=0.02 cost.profile=experiments/device/host_ort_1thread

`run_baseline(cfg)`: one method × budget × seed run from the composed `configs/baseline.yaml` (the pure function
behind `deepiot-baseline` and the reproduction harness, `deepiot.cli.harness`).

Like `deepiot-compress`, it trains-or-loads the experiment's original (`deepiot.cli.train.ensure_trained`), then
runs `cfg.method` at `cfg.budget` and the shared path (fine-tune → test → report → export) into
`cfg.paths.output_dir` (method.floor: magnitude_floor's floor; method.plan: the slicing_plan.json whose
architecture scratch trains from scratch — the budget is then that run's and only recorded). Method "deepiot" runs the budget-driven compressor-critic search (`deepiot.compress`
with the compress/critic/schedule groups, the budget as its target), whose sliced model is fine-tuned with
the same recipe; with `recipe=best` it keeps the `finetune` group of the compress config.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from deepiot.api import compress
from deepiot.baselines.pipeline import METHODS, SCRATCH_ALTERNATIVE_METHODS, prune
from deepiot.checkpoint import load_trained_model
from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.cli.compress import (
    check_budgets_on_architecture,
    compression_config,
    config_device,
    output_options,
)
from deepiot.cli.train import ensure_trained
from deepiot.compression import CompressionConfig
from deepiot.compression.budget import DEVICE_BUDGETS, LatencyProfile
from deepiot.compression.config import latency_profile_of
from deepiot.finetune import FinetuneConfig
from deepiot.train import check_train_config, load_bundle, show_progress
from deepiot.utils import ConfigError, config_to_dataclass

RECIPES = ("equal", "best")


DEEPIOT_METHODS = ("deepiot", "deepiot_inverted")  # configs/method/deepiot*.yaml: the search and its variants


def compose_baseline_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose configs/baseline.yaml with command-line style overrides (set paths.output_dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="baseline", overrides=list(overrides))


def finetune_config(cfg: DictConfig) -> FinetuneConfig | None:
    """The recipe of this run: the finetune group, with the method's `best_finetune` changes when
    `recipe=best`; None when the method keeps its own fine-tuning (DeepIoT with recipe=best)."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {cfg.recipe!r}.")
    values = OmegaConf.to_container(cfg.finetune, resolve=True)
    if cfg.recipe == "best":
        changes = OmegaConf.to_container(cfg.method, resolve=True).get("best_finetune")
        if changes is None:
            return None
        values.update(changes)
    return config_to_dataclass(FinetuneConfig, values, "finetune")


def run_baseline(cfg: DictConfig) -> dict[str, Any]:
    """Run `cfg.method` on the experiment's trained original into `cfg.paths.output_dir`; returns the report."""
    recipe, (budget, cost) = check_baseline_config(cfg)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    bundle = load_bundle(cfg)
    deepiot_config = deepiot_compression_config(cfg, recipe) if method["name"] in DEEPIOT_METHODS else None
    if deepiot_config is not None:
        check_budgets_on_architecture(cfg, bundle, deepiot_config)  # before the original is trained
    original_path = ensure_trained(cfg)
    model, checkpoint = load_trained_model(original_path)
    out_dir = Path(cfg.paths.output_dir)
    outputs = output_options(cfg, checkpoint, original_path)
    if deepiot_config is not None:
        return compress(
            model, bundle.train, bundle.val, bundle.test, config=deepiot_config, out_dir=out_dir, outputs=outputs,
            progress=show_progress(cfg.progress_bar),
        ).report  # fmt: skip
    # fraction/counts replace the budget; scratch only records it (its structure is the plan's or the counts')
    own_structure = method["name"] != "scratch" and (method.get("fraction") or method.get("counts"))
    result = prune(
        model, bundle.train, bundle.val, bundle.test, method=method["name"],
        budget=None if own_structure else budget, cost=cost,
        counts=method.get("counts"), fraction=method.get("fraction"), normalizer=method.get("normalizer", "mean"),
        floor=method.get("floor"), plan=method.get("plan"), try_scratch=method.get("try_scratch", False),
        profile=latency_profile(cfg), finetune_config=recipe, seed=int(cfg.run_seed), out_dir=out_dir, outputs=outputs,
        progress=show_progress(cfg.progress_bar),
    )  # fmt: skip
    return result.report


def check_baseline_config(cfg: DictConfig) -> tuple[FinetuneConfig | None, tuple[float, str]]:
    """Every setting a run checks before it trains, loads or writes anything (ConfigError names the first bad
    one): the root config as deepiot-train/deepiot-compress check it (the device included), the method, the
    budget, the recipe and the device profile of a latency budget. Returns (recipe, (budget, cost))."""
    check_train_config(cfg)
    config_device(cfg)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    check_method_settings(method)
    recipe = finetune_config(cfg)
    budget, cost = budget_setting(cfg)
    if method["name"] == "unstructured" and cost != "params":
        raise ConfigError(
            f"method unstructured prunes single weights to a params budget: expected budget.cost=params, got {cost}."
        )
    if method["name"] in DEEPIOT_METHODS:
        compression_config(with_search_settings(cfg))
    if cost == "latency_ms":  # a missing or mismatched profile is refused before the original is trained
        latency_profile(cfg).load(f"a {cost} budget")
    return recipe, (budget, cost)


def check_method_settings(method: dict[str, Any]) -> None:
    """The method group: a known name, magnitude/random's fraction, counts and normalizer, and try_scratch."""
    name = method.get("name")
    if name not in (*DEEPIOT_METHODS, *METHODS):
        raise ConfigError(
            f"config value method.name={name!r} is invalid: expected one of {', '.join((*DEEPIOT_METHODS, *METHODS))}."
        )
    fraction = method.get("fraction")
    if fraction is not None and not (is_number(fraction) and 0 < fraction <= 1):
        raise ConfigError(
            f"config value method.fraction={fraction!r} is invalid: expected null (use the budget) or the kept "
            "fraction of every group, a number in (0, 1]."
        )
    counts = method.get("counts")
    if counts is not None and not (
        isinstance(counts, dict) and all(type(count) is int and count >= 1 for count in counts.values())
    ):
        raise ConfigError(
            f"config value method.counts={counts!r} is invalid: expected null (use the budget) or a mapping "
            "{group: kept count} of integers >= 1, e.g. method.counts={fc1:30,fc2:10}."
        )
    if fraction is not None and counts is not None:
        raise ConfigError(
            f"method.fraction={fraction} and method.counts={counts} are both set: expected at most one of them."
        )
    normalizer = method.get("normalizer", "mean")
    if normalizer not in ("mean", "max"):
        raise ConfigError(f"config value method.normalizer={normalizer!r} is invalid: expected mean or max.")
    try_scratch = method.get("try_scratch", False)
    if not isinstance(try_scratch, bool):
        raise ConfigError(
            f"config value method.try_scratch={try_scratch!r} is invalid: expected true or false."
        )
    if try_scratch and name not in SCRATCH_ALTERNATIVE_METHODS:
        raise ConfigError(
            f"method.try_scratch=true applies to the methods that fine-tune the original's weights "
            f"({', '.join(SCRATCH_ALTERNATIVE_METHODS)}), not to method {name}."
        )


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def budget_setting(cfg: DictConfig) -> tuple[float, str]:
    """(budget, cost): budget.fraction for a params/macs budget, budget.limit for one in device units;
    ConfigError names a bad budget.cost, a fraction outside (0, 1] or a limit that is not > 0."""
    cost, limit = cfg.budget.cost, cfg.budget.get("limit")
    if cost not in ("params", "macs", *DEVICE_BUDGETS):
        raise ConfigError(
            f"config value budget.cost={cost!r} is invalid: expected params or macs (budget.fraction) or one of "
            f"{', '.join(DEVICE_BUDGETS)} (budget.limit in device units)."
        )
    if cost in DEVICE_BUDGETS:
        if limit is None:
            raise ConfigError(
                f"budget.cost={cost} is a budget in {DEVICE_BUDGETS[cost].unit}: expected budget.limit=<value in "
                f"{DEVICE_BUDGETS[cost].unit}> (budget.fraction is for params and macs budgets)."
            )
        if not (is_number(limit) and limit > 0):
            raise ConfigError(
                f"config value budget.limit={limit!r} is invalid: expected a number > 0 "
                f"({DEVICE_BUDGETS[cost].unit} for budget.cost={cost})."
            )
        return float(limit), cost
    if limit is not None:
        raise ConfigError(
            f"budget.limit={limit} is for budgets in device units ({', '.join(DEVICE_BUDGETS)}), but budget.cost="
            f"{cost}: expected budget.fraction for it, or budget.cost=<one of {', '.join(DEVICE_BUDGETS)}>."
        )
    fraction = cfg.budget.fraction
    if not (is_number(fraction) and 0 < fraction <= 1):
        raise ConfigError(
            f"config value budget.fraction={fraction!r} is invalid: expected the fraction of the original's "
            f"{cost} left, a number in (0, 1]."
        )
    return float(fraction), cost


def latency_profile(cfg: DictConfig) -> LatencyProfile:
    """The device profile settings of the cost group (cost.profile, cost.runtime, cost.threads)."""
    return latency_profile_of(OmegaConf.to_container(cfg.cost, resolve=True))


def with_search_settings(cfg: DictConfig) -> DictConfig:
    """`cfg` with the method's `search` settings ({group: {key: value}}, e.g. {critic: {mask_scale: inverted}})
    merged into the compression groups: how a DeepIoT variant (configs/method/deepiot_*.yaml) differs."""
    search = OmegaConf.to_container(cfg.method, resolve=True).get("search") or {}
    unknown = sorted(set(search) - {"compress", "compressor", "critic", "schedule"})
    if unknown:
        raise ConfigError(
            f"method.search may set the compress, compressor, critic and schedule groups, got {unknown}."
        )
    return OmegaConf.merge(cfg, search) if search else cfg


def deepiot_compression_config(cfg: DictConfig, recipe: FinetuneConfig | None) -> CompressionConfig:
    """DeepIoT's budget-driven search with the run's budget as its target and the run's seed, fine-tuning the
    sliced model with `recipe` (the shared one; None keeps the compress config's own `finetune` group)."""
    config = compression_config(with_search_settings(cfg))
    budget, cost = budget_setting(cfg)
    targets = {key: None for key in ("params", "macs", *DEVICE_BUDGETS)}
    targets[cost] = budget
    loop = dataclasses.replace(
        config.loop, seed=int(cfg.run_seed), **{f"target_{key}": value for key, value in targets.items()}
    )
    return dataclasses.replace(config, loop=loop, finetune=recipe or config.finetune)


@checked_command_line("deepiot-baseline", "baseline")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="baseline")
def main(cfg: DictConfig) -> float:
    """Run, print a one-line summary, and return the compressed model's validation accuracy."""
    with reported_errors("deepiot-baseline"):
        try:
            report = run_baseline(cfg)
        except ValueError as err:  # a budget a method cannot meet, a recurrent model for torch_pruning, ...
            print(f"deepiot-baseline: error: {err}", file=sys.stderr)
            raise SystemExit(2) from err
    left, accuracy = report["cost"]["left"], report["accuracy"]
    params = left.get("nonzero_params", left["params"])
    print(
        f"[deepiot-baseline] {cfg.name} {cfg.method.name}: params left {100 * params:.2f}%  "
        f"MACs left {100 * left['macs']:.2f}%  test accuracy {accuracy['original_test']:.4f} → "
        f"{accuracy['compressed_test']:.4f}  report {cfg.paths.output_dir}/report.md"
    )
    return accuracy["compressed_val"]


if __name__ == "__main__":
    main()
