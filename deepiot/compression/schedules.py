"""Pruning-threshold schedules (docs/design.md §2 "The threshold τ and its decay γ" and §3 "accuracy-guarded threshold").

A schedule gives the threshold τ for an iteration. While compressing, keep probabilities p < τ are decayed by
γ before sampling (`MaskDistribution`), and an element is "left" when p ≥ τ. Schedules are small stateful
callables: `schedule(iteration) -> τ`, `observe(iteration, val_accuracy, reference_accuracy)` after each
evaluation, `at_limit(iteration)` once τ cannot rise further, and `state_dict()` for resuming.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

SCHEDULES = ("paper", "guarded")


@dataclass(frozen=True)
class ScheduleConfig:
    """Threshold schedule settings; defaults are the paper's code (τ 0 → 0.825 in 33 steps) raised once per 50
    iterations, as in the command line's default compress=quick (the paper's code: every 500, compress=paper).

    `guarded` reuses `final_tau` as its ceiling and `every` as the least number of iterations between two
    raises; it raises τ by one step (final_tau / steps) while validation accuracy ≥ reference − tolerance
    and backs off one step otherwise.
    """

    name: str = "paper"  # "paper" | "guarded"
    final_tau: float = 0.825
    steps: int = 33
    every: int = 50
    decay: float = 0.5  # γ: p < τ is multiplied by γ before sampling
    tolerance: float = 0.005  # guarded only: accuracy the schedule may give up, absolute

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {self.name!r}.")
        if not 0.0 <= self.final_tau < 1.0:
            raise ValueError(
                f"schedule.final_tau (the highest threshold τ) must be in [0, 1), got {self.final_tau}."
            )
        if self.steps <= 0 or self.every <= 0:
            raise ValueError(
                f"schedule.steps and schedule.every must be > 0, got {self.steps} and {self.every}."
            )
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"schedule.decay (γ) must be in (0, 1], got {self.decay}.")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"schedule.tolerance must be in [0, 1), got {self.tolerance}.")

    @property
    def step_size(self) -> float:
        return self.final_tau / self.steps


class ThresholdSchedule(Protocol):
    def __call__(self, iteration: int) -> float: ...

    def observe(self, iteration: int, val_accuracy: float, reference_accuracy: float) -> None: ...

    def at_limit(self, iteration: int) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class PaperThreshold:
    """τ(i) = min(⌊i / every⌋, steps) · final_tau / steps — fixed, whatever the accuracy."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config

    def __call__(self, iteration: int) -> float:
        return min(iteration // self.config.every, self.config.steps) * self.config.step_size

    def observe(self, iteration: int, val_accuracy: float, reference_accuracy: float) -> None:
        """The paper's schedule ignores accuracy."""

    def at_limit(self, iteration: int) -> bool:
        return iteration // self.config.every >= self.config.steps

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Stateless: τ is a function of the iteration."""


class AccuracyGuardedThreshold:
    """Raise τ one step (at most once per `every` iterations) while val accuracy ≥ reference − tolerance;
    back off one step when it is not. It is at its limit at final_tau or once it has backed off."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.level = 0  # τ = level · step_size
        self.last_raise = 0
        self.backed_off = False

    def __call__(self, iteration: int) -> float:
        return self.level * self.config.step_size

    def observe(self, iteration: int, val_accuracy: float, reference_accuracy: float) -> None:
        if val_accuracy < reference_accuracy - self.config.tolerance:
            if self.level > 0:
                self.level -= 1
                self.backed_off = True
        elif iteration - self.last_raise >= self.config.every and self.level < self.config.steps:
            self.level += 1
            self.last_raise = iteration

    def at_limit(self, iteration: int) -> bool:
        return self.backed_off or self.level >= self.config.steps

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "last_raise": self.last_raise, "backed_off": self.backed_off}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.level = int(state["level"])
        self.last_raise = int(state["last_raise"])
        self.backed_off = bool(state["backed_off"])


def build_schedule(config: ScheduleConfig) -> ThresholdSchedule:
    """The schedule named by `config.name`."""
    return PaperThreshold(config) if config.name == "paper" else AccuracyGuardedThreshold(config)
