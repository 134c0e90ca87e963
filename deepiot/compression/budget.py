"""Budget-driven search: the user's budget steers the compressor and decides the final kept set.

Budgets are fractions of the original's cost left (`compress.target_params`, `compress.target_macs`).
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
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from deepiot.compression.reward import Reward
from deepiot.structure import Structure

BUDGET_PRESSURES = ("elasticity", "marginal")
# loop settings → the structure cost each budget is measured in
BUDGET_COSTS = {"target_params": "params", "target_macs": "macs"}


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


def budgets_of(loop_settings: Mapping[str, Any]) -> dict[str, float]:
    """{cost name: fraction} of the budgets that are set in the loop settings."""
    return {
        cost: loop_settings[key] for key, cost in BUDGET_COSTS.items() if loop_settings.get(key) is not None
    }


def cost_ratios(structure: Structure, kept: Mapping[str, list[int]]) -> dict[str, float]:
    """Every structure cost left as a fraction of the original ({'params': …, 'macs': …, …})."""
    original = structure.cost()
    pruned = structure.cost({name: len(indices) for name, indices in kept.items()})
    return {name: getattr(pruned, name) / getattr(original, name) for name in original._fields}


def fit_to_budget(
    structure: Structure,
    kept: Mapping[str, list[int]],
    scores: Mapping[str, Tensor],
    budgets: Mapping[str, float],
) -> dict[str, list[int]]:
    """The kept set adjusted to meet every budget as fully as possible, by element score (keep probability).

    First the lowest-scored kept elements leave (never a group's last one) until every budget holds; then
    removed elements come back, highest score first, whenever every budget still holds with them.
    """
    kept_sets = {name: set(indices) for name, indices in kept.items()}
    ranked = sorted(
        (
            (float(score), name, index)
            for name, values in scores.items()
            for index, score in enumerate(values)
        ),
        reverse=True,
    )

    def fits() -> bool:
        ratios = cost_ratios(structure, kept_sets)
        return all(ratios[name] <= budget + 1e-12 for name, budget in budgets.items())

    for _, name, index in reversed(ranked):  # lowest score first
        if fits():
            break
        if index in kept_sets[name] and len(kept_sets[name]) > 1:
            kept_sets[name].discard(index)
    for _, name, index in ranked:  # highest score first
        if index not in kept_sets[name]:
            kept_sets[name].add(index)
            if not fits():
                kept_sets[name].discard(index)
    return {name: sorted(indices) for name, indices in kept_sets.items()}
