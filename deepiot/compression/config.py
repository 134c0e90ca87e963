"""Compression settings: the loop's (`LoopConfig`) and the whole run's (`CompressionConfig`, one field per
config group: compress, compressor, critic, schedule, finetune), compared before a run resumes."""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from deepiot.compression.budget import BUDGET_PRESSURES, PROFILE_KEYS, LatencyProfile, needs_latency
from deepiot.compression.compressor import CompressorConfig
from deepiot.compression.reward import CriticConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.finetune import FinetuneConfig
from deepiot.utils import config_to_dataclass

ELEMENT_CHOICES = ("critic", "original", "l1", "auto")

# The config group (configs/<group>/*.yaml) that fills each field of CompressionConfig.
CONFIG_GROUPS = {
    "loop": "compress",
    "compressor": "compressor",
    "critic": "critic",
    "schedule": "schedule",
    "finetune": "finetune",
}


@dataclass(frozen=True)
class LoopConfig:
    """Loop settings. Targets (budgets) are fractions of the original left (e.g. 0.07 = 7% of the parameters) or
    limits in device units: batch-1 latency in ms predicted by a device profile, serialised fp32 weights (flash)
    and peak activation memory (RAM) in KiB (see `deepiot.compression.budget`).

    The defaults are the command line's default recipe (configs/compress/quick.yaml; tests/test_defaults.py
    holds them equal): `deepiot.compress(...)` and `deepiot-compress` run the same loop.

    Stop rule (checked every `eval_every` iterations): every set target met and validation accuracy ≥ the
    floor, where the floor is the higher of `min_val_accuracy` and original − `max_accuracy_drop` (unset parts
    are ignored); or the kept set unchanged for `patience` evaluations once τ is at its limit; or
    `max_iterations`. Then the sliced model is fine-tuned (`CompressionConfig.finetune`).
    """

    max_iterations: int = 2000
    batch_size: int = 64
    eval_every: int = 100
    target_params: float | None = None
    target_macs: float | None = None
    target_latency_ms: float | None = None  # needs CompressionConfig.latency_profile
    target_model_kb: float | None = None
    target_peak_activation_kb: float | None = None
    min_val_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    patience: int = 5
    warmup_iterations: int = 0  # Algorithm 1, phase 1: compressor-only iterations, critic frozen, τ = 0
    budget_lr: float = 0.05  # dual-ascent step of the budget prices λ (0: fixed λ = 0, targets only stop)
    budget_pressure: str = (
        "elasticity"  # "elasticity" | "marginal" (see deepiot.compression.budget.BudgetController)
    )
    fit_to_budget: bool = True
    # the least kept count of every group in the final kept set (capped at the group's size; 1 = the paper's): a
    # group the search empties to one element is a bottleneck every class must pass (DeepSense/HAPT user's GRU at
    # one unit: 12.5% for 30 people where the other structures reach 46-59%); the floors' cost must fit the budget
    min_kept: int = 1
    # after the run, also fine-tune the L1-magnitude choice at the same per-group counts (same recipe, same
    # steps) and report both: how the search compares with the simplest baseline at the same size
    compare_magnitude: bool = True
    eval_batch_size: int = 512
    log_every: int = 10
    seed: int = 0
    # which elements and weights fine-tuning starts from, at the searched counts (see loop.choose_elements):
    # "critic" (the search's own), "original" (same elements, original weights), "l1" (the original's largest-L1
    # elements), or "auto" (each fine-tuned for choice_steps steps; the best validation accuracy wins)
    element_choice: str = "critic"
    choice_steps: int = 500
    # also train the searched architecture from scratch (every module re-initialised, seeded by `seed`) with
    # the same recipe and teacher, and keep whichever of the two validates better (loop.scratch_alternative):
    # the search used as an architecture search (Liu et al., ICLR 2019) when its weights do not help
    try_scratch: bool = False

    def __post_init__(self) -> None:
        if self.element_choice not in ELEMENT_CHOICES:
            raise ValueError(
                f"compress.element_choice must be one of {ELEMENT_CHOICES}, got {self.element_choice!r}."
            )
        if not isinstance(self.try_scratch, bool):
            raise ValueError(f"compress.try_scratch must be true or false, got {self.try_scratch!r}.")
        for name in ("warmup_iterations", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"compress.{name} must be an integer, got {getattr(self, name)!r}.")
        for name in (
            "max_iterations",
            "batch_size",
            "eval_every",
            "patience",
            "eval_batch_size",
            "log_every",
            "choice_steps",
            "min_kept",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"compress.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.warmup_iterations < 0 or not self.budget_lr >= 0:
            raise ValueError(
                f"compress.warmup_iterations and compress.budget_lr must be >= 0, got {self.warmup_iterations} "
                f"and {self.budget_lr}."
            )
        if self.budget_pressure not in BUDGET_PRESSURES:
            raise ValueError(
                f"compress.budget_pressure must be one of {BUDGET_PRESSURES}, got {self.budget_pressure!r}."
            )
        if self.seed < 0:
            raise ValueError(f"compress.seed must be >= 0, got {self.seed}.")
        for name in ("target_params", "target_macs"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(
                    f"compress.{name} is a fraction of the original left and must be in (0, 1], got {value}."
                )
        for name in ("target_latency_ms", "target_model_kb", "target_peak_activation_kb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"compress.{name} is a limit in device units and must be > 0, got {value}.")
        for name in ("min_val_accuracy", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"compress.{name} must be in [0, 1], got {value}.")


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that decides what a compression computes (compared before resuming a run)."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    latency_profile: LatencyProfile = field(
        default_factory=LatencyProfile
    )  # prices `latency` (the cost group)

    def latency_needed_by(self) -> str | None:
        """The setting that needs predicted latency (a latency budget or cost=latency), or None."""
        return needs_latency(self.critic.cost, asdict(self.loop))

    def check_latency_profile(self) -> None:
        """BudgetError now, before any work, when latency is needed and the profile is missing or made for
        another runtime or thread count."""
        needed_by = self.latency_needed_by()
        if needed_by is not None:
            self.latency_profile.load(needed_by)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (tuples as lists), as stored in the checkpoint."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_groups(cls, groups: Mapping[str, Mapping[str, Any]]) -> CompressionConfig:
        """The settings from plain config groups ({"compress": {...}, "critic": {...}, ...}, see CONFIG_GROUPS),
        each filled into its dataclass by `config_to_dataclass`; ConfigError names an unknown key or bad value."""
        hints = typing.get_type_hints(cls)
        return cls(
            **{
                name: config_to_dataclass(hints[name], groups[group], group)
                for name, group in CONFIG_GROUPS.items()
            },
            latency_profile=latency_profile_of(groups.get("cost", {})),
        )


def latency_profile_of(cost: Mapping[str, Any]) -> LatencyProfile:
    """The device-profile settings of a `cost` group (cost.profile, cost.runtime, cost.threads; the group's other
    keys belong to the cost model) as a LatencyProfile, its defaults where a key is absent; ConfigError names a
    bad value. The one place a profile is built from settings: the search and the baselines both call it."""
    return config_to_dataclass(
        LatencyProfile, {key: cost[key] for key in PROFILE_KEYS if key in cost}, "cost"
    )
