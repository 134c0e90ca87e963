"""`run_baseline(cfg)`: one method × budget × seed run from the composed `configs/baseline.yaml` (pure function
behind `deepiot-baseline` and `scripts/reproduce.py`).

Like `deepiot-compress`, it trains-or-loads the experiment's original (`deepiot.train.ensure_trained`), then
runs `cfg.method` at `cfg.budget` and the shared path (fine-tune → test → report → export) into
`cfg.paths.output_dir`. Method "deepiot" runs the budget-driven compressor-critic search (`deepiot.compress`
with the compress/critic/schedule groups, the budget as its target), whose sliced model is fine-tuned with
the same recipe; with `recipe=best` it keeps the `finetune` group of the compress config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from deepiot.api import OutputOptions, compress
from deepiot.baselines.pipeline import prune
from deepiot.checkpoint import load_trained_model
from deepiot.cli import CONFIG_DIR
from deepiot.compression import CompressionResult
from deepiot.finetune import FinetuneConfig
from deepiot.train import ensure_trained, load_bundle, show_progress
from deepiot.utils import ConfigError, config_to_dataclass

RECIPES = ("equal", "best")


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
    if cfg.trainer.num_threads is not None:
        torch.set_num_threads(cfg.trainer.num_threads)
    recipe = finetune_config(cfg)
    original_path = ensure_trained(cfg)
    model, checkpoint = load_trained_model(original_path)
    bundle = load_bundle(cfg)
    out_dir = Path(cfg.paths.output_dir)
    from deepiot.cli.compress import output_options  # deferred: the CLI module imports Hydra's main

    outputs = output_options(cfg, checkpoint, original_path)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    budget, cost = float(cfg.budget.fraction), str(cfg.budget.cost)
    if method["name"] == "deepiot":
        return run_deepiot(cfg, model, bundle, recipe, out_dir, outputs).report
    result = prune(
        model, bundle.train, bundle.val, bundle.test, method=method["name"],
        budget=None if method.get("fraction") or method.get("counts") else budget, cost=cost,
        counts=method.get("counts"), fraction=method.get("fraction"), normalizer=method.get("normalizer", "mean"),
        finetune_config=recipe, seed=int(cfg.run_seed), out_dir=out_dir, outputs=outputs,
        progress=show_progress(cfg.trainer),
    )  # fmt: skip
    return result.report


def run_deepiot(
    cfg: DictConfig,
    model: torch.nn.Module,
    bundle: Any,
    recipe: FinetuneConfig | None,
    out_dir: Path,
    outputs: OutputOptions,
) -> CompressionResult:
    """DeepIoT's budget-driven search with the budget as its target, then its fine-tuning of the sliced model
    with `recipe` (the shared one; None keeps the compress config's own `finetune` group)."""
    from deepiot.cli.compress import compression_config  # deferred: the CLI module imports Hydra's main

    config = compression_config(cfg)
    loop = dataclasses.replace(
        config.loop,
        seed=int(cfg.run_seed),
        target_params=cfg.budget.fraction if cfg.budget.cost == "params" else None,
        target_macs=cfg.budget.fraction if cfg.budget.cost == "macs" else None,
    )
    config = dataclasses.replace(config, loop=loop, finetune=recipe or config.finetune)
    return compress(
        model, bundle.train, bundle.val, bundle.test, config=config, out_dir=out_dir, outputs=outputs,
        progress=show_progress(cfg.trainer),
    )  # fmt: skip
