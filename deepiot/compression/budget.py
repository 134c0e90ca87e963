"""Budget-driven search: the user's budget steers the compressor and decides the final kept set.

Budgets are fractions of the original's cost left (`compress.target_params`, `compress.target_macs`) or limits in
device units (`compress.target_latency_ms`: batch-1 latency predicted by a device profile's latency model;
`compress.target_model_kb`: serialised fp32 weights, the flash a model needs; `compress.target_peak_activation_kb`:
the largest layer input + output at batch 1, the RAM it needs; 1 KiB = 1024 bytes). `budget_fractions` turns
every budget into the fraction of the original's cost it allows, after checking that a budget in device units
is not already met by the original and is not below the smallest structure the model can have (one element per
group).

- `BudgetController` adds Σ_k λ_k · E[cost_k(z)]/cost_k(original) to the compressor's objective, with the
  expected cost differentiable in the (threshold-decayed) keep probabilities, and adapts each λ_k by dual
  ascent on the log budget violation: λ_k ← max(0, λ_k + η · log(E[cost_k ratio] / budget_k)). A budget that
  is exceeded raises its price until the compressor's probabilities meet it; one that is met lowers it.
- `fit_to_budget` turns the search's kept set into one that meets every budget and uses it fully: drop the
  least probable kept elements while a budget is exceeded, then add back the most probable removed ones
  that still fit (each group keeps at least one element).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from deepiot.compression.reward import Reward
from deepiot.cost.registry import get_cost_function
from deepiot.cost.types import Cost
from deepiot.device.cost import attach_latency_model, is_attached  # also registers the `latency` cost
from deepiot.device.profile import RUNTIMES, ProfileError, load_profile
from deepiot.structure import Structure
from deepiot.utils import ConfigError

BUDGET_PRESSURES = ("elasticity", "marginal")
LATENCY_RUNTIMES = RUNTIMES  # the runtimes deepiot-profile profiles: onnxruntime, torch, executorch
# keys of the cost group that choose the device profile (LatencyProfile); the group's `name` is critic.cost
PROFILE_KEYS = ("profile", "runtime", "threads")


class BudgetUnit(NamedTuple):
    """How a budget setting is measured: the cost it limits, and its unit (None: a fraction of the original)."""

    cost: str
    unit: str | None = None
    scale: float = 1.0  # the cost's own units per budget unit (bytes per KiB)


# loop settings → the cost each budget limits and its unit
BUDGET_COSTS = {
    "target_params": BudgetUnit("params"),
    "target_macs": BudgetUnit("macs"),
    "target_latency_ms": BudgetUnit("latency", "ms"),
    "target_model_kb": BudgetUnit("model_bytes", "KiB", 1024.0),
    "target_peak_activation_kb": BudgetUnit("activation_bytes", "KiB", 1024.0),
}


# budgets in device units by their short name (deepiot-baseline budget.cost=<name>): latency_ms, model_kb, ...
DEVICE_BUDGETS = {
    key.removeprefix("target_"): unit for key, unit in BUDGET_COSTS.items() if unit.unit is not None
}


class BudgetError(ConfigError):
    """A budget that cannot steer a search: no profile for it, already met by the original, or impossible."""


@dataclass(frozen=True)
class LatencyProfile:
    """The device profile whose latency model prices the `latency` cost (`cost=latency`, `target_latency_ms`),
    and the runtime and thread count it must have been made with (`cost.profile`, `cost.runtime`, `cost.threads`)."""

    profile: str | None = None  # device_profile.json or its folder (made by deepiot-profile)
    runtime: str = "onnxruntime"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.runtime not in LATENCY_RUNTIMES:
            raise ValueError(
                f"cost.runtime must be one of {LATENCY_RUNTIMES}, got {self.runtime!r}: the runtime the device "
                "profile (cost.profile) was made for with `deepiot-profile runtime=...`, whose milliseconds "
                "compress.target_latency_ms counts."
            )
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ValueError(f"cost.threads must be an integer >= 1, got {self.threads!r}.")

    def load(self, needed_by: str) -> dict[str, Any]:
        """The profile document, checked to be for this runtime and thread count; BudgetError otherwise."""
        if self.profile is None:
            raise BudgetError(
                f"{needed_by} needs a device profile to predict latency, and none is set: expected "
                "cost.profile=<device_profile.json> (in Python: LatencyProfile(profile=...)); make one on the "
                "target device with `deepiot-profile runtime=onnxruntime threads=1`, e.g. "
                "experiments/device/host_ort_1thread/device_profile.json for this project's machine."
            )
        try:
            document = load_profile(self.profile)
        except ProfileError as err:
            raise BudgetError(f"{needed_by}: cost.profile={self.profile!r} cannot be used: {err}") from err
        made = document.get("environment", {})
        if (made.get("runtime"), made.get("threads")) != (self.runtime, self.threads):
            raise BudgetError(
                f"{needed_by}: the device profile {self.profile} was made for runtime={made.get('runtime')} with "
                f"threads={made.get('threads')}, but latency is asked for runtime={self.runtime} with "
                f"threads={self.threads}; latencies do not carry over between runtimes or thread counts. Expected a "
                "profile of the same runtime and threads: profile again with `deepiot-profile "
                f"runtime={self.runtime} threads={self.threads}`, or set cost.runtime / cost.threads to the profile's."
            )
        return document


def needs_latency(cost: str, loop_settings: Mapping[str, Any]) -> str | None:
    """What asks for predicted latency (`critic.cost=latency` or a latency budget), or None."""
    if loop_settings.get("target_latency_ms") is not None:
        return f"compress.target_latency_ms={loop_settings['target_latency_ms']}"
    return "cost=latency" if cost == "latency" else None


def attach_profile(
    structure: Structure, model: nn.Module, settings: LatencyProfile, needed_by: str | None
) -> None:
    """Attach `settings`' latency model to `structure` (layers read from `model`) when something needs it."""
    if needed_by is None:
        return
    document = settings.load(needed_by)
    try:
        attach_latency_model(structure, model, document)
    except ValueError as err:  # the profile lacks a layer kind of this model
        raise BudgetError(
            f"{needed_by}: cost.profile={settings.profile!r} cannot price this model: {err}"
        ) from err


def cost_of(structure: Structure, cost: str, counts: Mapping[str, int]) -> float:
    """`cost` (a structure cost field or a registered cost such as latency) with `counts[g]` elements kept."""
    if cost in Cost._fields:
        return float(getattr(structure.cost(counts), cost))
    masks = {}
    for group in structure.groups:  # [1, size] with the first counts[g] elements kept
        masks[group.name] = (torch.arange(group.size) < int(counts[group.name])).float().unsqueeze(0)
    return float(get_cost_function(cost)(structure, masks)[0])


def budget_fractions(structure: Structure, loop_settings: Mapping[str, Any]) -> dict[str, float]:
    """{cost: fraction of the original left} for every budget set in the loop settings (see `BUDGET_COSTS`).

    BudgetError, before any work, when a budget in device units is already met by the original (nothing to
    compress) or is below the smallest structure the model can have (one element per group). A fraction below
    that structure is kept as it was: the search ends at one element per group (small test models and the
    experiments' default 1.98% rely on it).
    A latency budget needs the profile attached first (`attach_profile`).
    """
    full = dict(structure.group_sizes)
    min_kept = int(loop_settings.get("min_kept") or 1)
    fractions = {}
    for key, (cost, unit, scale) in BUDGET_COSTS.items():
        value = loop_settings.get(key)
        if value is None:
            continue
        original = cost_of(structure, cost, full)
        if unit is None:
            check_floor_cost(structure, cost, value, min_kept, original)
            fractions[cost] = value
            continue
        check_device_budget(
            structure, f"compress.{key}={value:g}", cost, value, unit, scale, original, min_kept
        )
        fractions[cost] = value * scale / original
    return fractions


def check_floor_cost(
    structure: Structure, cost: str, fraction: float, min_kept: int, original: float
) -> None:
    """BudgetError when `min_kept` elements in every group (capped at its size) cost more than `fraction`."""
    if min_kept <= 1:
        return  # one element per group below the budget: the search ends there (see budget_fractions)
    floor = floor_cost(structure, cost, min_kept)
    if floor > fraction * original * (1 + 1e-9):
        raise BudgetError(
            f"compress.min_kept={min_kept} cannot be met at compress.target_{cost}={fraction:g}: {min_kept} elements "
            f"in every group already leave {floor / original:.4g} of the {cost}. Expected a smaller min_kept or a "
            f"budget of at least {floor / original:.4g}."
        )


def floor_cost(structure: Structure, cost: str, min_kept: int) -> float:
    """`cost` of the smallest structure the fit may leave: `min_kept` elements in every group (capped at its size)."""
    return cost_of(
        structure, cost, {name: min(min_kept, size) for name, size in structure.group_sizes.items()}
    )


def check_device_budget(
    structure: Structure,
    setting: str,
    cost: str,
    value: float,
    unit: str,
    scale: float,
    original: float,
    min_kept: int = 1,
) -> None:
    """BudgetError when a budget of `value` `unit`s is met by the original or below the smallest structure
    (`min_kept` elements a group)."""
    source = " predicted by the device profile" if cost == "latency" else f" of {cost.replace('_', ' ')}"
    if original <= value * scale:
        raise BudgetError(
            f"{setting}: the original model already fits ({original / scale:.4g} {unit}{source}), so there is "
            f"nothing to compress for this budget. Expected a budget below {original / scale:.4g} {unit}; or use "
            "the original as it is."
        )
    floor = floor_cost(structure, cost, min_kept)
    if floor > value * scale * (1 + 1e-9):
        smallest = "one element" if min_kept <= 1 else f"compress.min_kept={min_kept} elements"
        raise BudgetError(
            f"{setting} cannot be met: the smallest structure the model can have ({smallest} per group; the layers "
            f"deepiot does not compress stay whole) costs {floor / scale:.4g} {unit}{source}, more than the budget "
            f"of {value:g} {unit}. Expected a budget of at least {floor / scale:.4g} {unit}."
        )


class BudgetController:
    """Dual ascent on one price λ per budget; its penalty term goes into the compressor's loss."""

    def __init__(
        self, structure: Structure, budgets: Mapping[str, float], lr: float, pressure: str = "elasticity"
    ) -> None:
        self.budgets = dict(budgets)  # cost name → fraction of the original left
        self.costs = {name: Reward(structure, cost=name) for name in self.budgets}
        self.lr = lr
        self.pressure = pressure
        self.prices = {name: 0.0 for name in self.budgets}

    def penalty(self, keep_probs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(the budgets' term of the compressor's loss, differentiable in `keep_probs`; E[cost ratio] per budget).

        "marginal" pressure is the exact gradient of Σ_k λ_k · E[cost_k ratio]: each element is pushed by its
        group's marginal cost. "elasticity" pressure scales group g's push by n_g / mean(n) (n = expected kept
        counts), i.e. follows the gradient in log-count space: every group shrinks by the share of the cost it
        is responsible for, so a group with a large fan-out (conv2 feeding a 500-unit fc1) is not emptied
        first only because its neighbour is still large.
        """
        counts = torch.stack([prob.sum() for prob in keep_probs.values()])  # [G], carries the gradient
        scale = torch.ones_like(counts)
        if self.pressure == "elasticity":
            scale = counts.detach() / counts.detach().mean()  # [G]
        total, ratios = counts.new_zeros(()), {}
        for name, cost in self.costs.items():
            expected, slopes = cost.cost_slopes(keep_probs)  # [1], [G]
            ratios[name] = float(expected[0])
            total = total + self.prices[name] * (slopes * scale * counts).sum()
        return total, ratios

    def update(self, expected_ratios: Mapping[str, float]) -> None:
        """One dual-ascent step on every price from the expected cost ratios of this iteration."""
        for name, budget in self.budgets.items():
            violation = math.log(max(expected_ratios[name], 1e-12) / budget)
            self.prices[name] = max(0.0, self.prices[name] + self.lr * violation)

    def state_dict(self) -> dict[str, Any]:
        return {"prices": dict(self.prices)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.prices = {name: float(state["prices"][name]) for name in self.budgets}


def cost_ratios(
    structure: Structure, kept: Mapping[str, Iterable[int]], costs: Iterable[str] = Cost._fields
) -> dict[str, float]:
    """Each of `costs` left as a fraction of the original ({'params': …, 'macs': …, …}; registered costs such
    as 'latency' too)."""
    counts = {name: len(list(indices)) for name, indices in kept.items()}
    full = dict(structure.group_sizes)
    return {cost: cost_of(structure, cost, counts) / cost_of(structure, cost, full) for cost in costs}


def kept_values(structure: Structure, kept: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """Latency (when a profile is attached), model KiB and peak activation KiB of a kept set, in device units."""
    counts = {name: len(list(indices)) for name, indices in kept.items()}
    values = {}
    for key, (cost, unit, scale) in BUDGET_COSTS.items():
        if unit is None or (cost == "latency" and not has_latency(structure)):
            continue
        values[key.removeprefix("target_")] = cost_of(structure, cost, counts) / scale
    return values


def has_latency(structure: Structure) -> bool:
    """Whether a device profile's latency model is attached to `structure`."""
    return is_attached(structure)


def fit_to_budget(
    structure: Structure,
    kept: Mapping[str, list[int]],
    scores: Mapping[str, Tensor],
    budgets: Mapping[str, float],
    min_kept: int = 1,
) -> dict[str, list[int]]:
    """The kept set adjusted to meet every budget as fully as possible, by element score (keep probability).

    First every group below `min_kept` elements (capped at its size) gets its highest-scored elements back up to
    that floor; then the lowest-scored kept elements leave (never below a group's floor) until every budget holds;
    then removed elements come back, highest score first, whenever every budget still holds with them. With no
    budgets only the floor is applied.
    """
    kept_sets = {name: set(indices) for name, indices in kept.items()}
    floors = {group.name: min(max(min_kept, 1), group.size) for group in structure.groups}
    ranked = sorted(
        (
            (float(score), name, index)
            for name, values in scores.items()
            for index, score in enumerate(values)
        ),
        reverse=True,
    )
    for _, name, index in ranked:  # highest score first
        if len(kept_sets[name]) < floors[name]:
            kept_sets[name].add(index)
    if not budgets:
        return {name: sorted(indices) for name, indices in kept_sets.items()}

    def fits() -> bool:
        ratios = cost_ratios(structure, kept_sets, budgets)
        return all(ratios[name] <= budget + 1e-12 for name, budget in budgets.items())

    for _, name, index in reversed(ranked):  # lowest score first
        if fits():
            break
        if index in kept_sets[name] and len(kept_sets[name]) > floors[name]:
            kept_sets[name].discard(index)
    for _, name, index in ranked:  # highest score first
        if index not in kept_sets[name]:
            kept_sets[name].add(index)
            if not fits():
                kept_sets[name].discard(index)
    return {name: sorted(indices) for name, indices in kept_sets.items()}
