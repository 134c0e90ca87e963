"""Which hidden elements a structured baseline keeps: `{group name: sorted indices}` for a `Structure`.

Magnitude scores an element by the L1 norm of its column of `structure.weight_matrix` (fan-in weights plus
the bias row; for an LSTM/GRU unit every gate's input, recurrent and bias rows), the criterion of Li et al.
(2017, "Pruning filters for efficient ConvNets"). Three ways to pick counts: given counts per group, a
uniform fraction per group, or a global budget (params/MACs fraction) met by removing the globally weakest
element (scores normalised per group) one at a time. Random keeps random elements at given counts (a control).
Every group keeps at least one element: a layer of width 0 would cut the network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from deepiot.compression.budget import cost_of
from deepiot.structure import Structure

Kept = dict[str, list[int]]
COSTS = ("params", "macs", "latency", "model_bytes", "activation_bytes")  # latency: a profile attached
NORMALIZERS = ("mean", "max")


def l1_scores(model: nn.Module, structure: Structure) -> dict[str, torch.Tensor]:
    """L1 norm of every hidden element's weight column, per group: {name: [size]}."""
    return {
        group.name: structure.weight_matrix(model, group.name).abs().sum(dim=0) for group in structure.groups
    }


def magnitude_at_counts(model: nn.Module, structure: Structure, counts: Mapping[str, int]) -> Kept:
    """The `counts[g]` largest-L1 elements of each group g (groups not named keep everything)."""
    check_counts(structure, counts)
    return {
        group.name: structure.largest_l1_elements(model, group.name, int(counts.get(group.name, group.size)))
        for group in structure.groups
    }


def magnitude_at_fraction(model: nn.Module, structure: Structure, fraction: float) -> Kept:
    """The largest-L1 round(fraction·size) elements (at least one) of every group."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the kept fraction per group must be in (0, 1], got {fraction}.")
    return magnitude_at_counts(model, structure, uniform_counts(structure, fraction))


def uniform_counts(structure: Structure, fraction: float) -> dict[str, int]:
    """round(fraction·size), at least 1, for every group."""
    return {group.name: max(1, round(fraction * group.size)) for group in structure.groups}


def magnitude_at_budget(
    model: nn.Module,
    structure: Structure,
    budget: float,
    cost: str = "params",
    normalizer: str = "mean",
) -> Kept:
    """Remove the globally weakest elements until the structure's `cost` is at most `budget` × the original.

    Each element's L1 score is divided by its group's mean (or max) so groups of different fan-in compare;
    removal follows the ascending normalised score, skipping each group's strongest element. The result is
    the shortest such prefix: keeping one more removed element would exceed the budget.
    """
    if cost not in COSTS:
        raise ValueError(f"the budget cost must be one of {', '.join(COSTS)}, got {cost!r}.")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"the score normalizer must be one of {', '.join(NORMALIZERS)}, got {normalizer!r}.")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"the budget is the fraction of the original {cost} left, in (0, 1]; got {budget}.")
    order = removal_order(l1_scores(model, structure), normalizer)
    removed = shortest_prefix_within_budget(structure, order, budget, cost)
    return kept_after_removing(structure, order[:removed])


def removal_order(scores: Mapping[str, torch.Tensor], normalizer: str) -> list[tuple[str, int]]:
    """(group, index) pairs from the weakest normalised score up; each group's strongest element is left out."""
    candidates = []
    for name, values in scores.items():
        scale = values.mean() if normalizer == "mean" else values.max()
        normalised = values / scale.clamp_min(torch.finfo(values.dtype).tiny)  # [size]
        strongest = int(torch.argmax(values))
        candidates += [(float(normalised[i]), name, i) for i in range(len(values)) if i != strongest]
    candidates.sort()  # ties: group name, then index
    return [(name, index) for _, name, index in candidates]


def shortest_prefix_within_budget(
    structure: Structure, order: list[tuple[str, int]], budget: float, cost: str
) -> int:
    """Fewest removals (a prefix of `order`) leaving at most `budget` of the original cost (binary search:
    the cost falls monotonically along the order — a latency model's nearly so; the prefix found always meets the
    budget); ValueError when even the whole order is not enough."""
    original = cost_of(structure, cost, structure.group_sizes)

    def fraction_left(removed: int) -> float:
        counts = dict(structure.group_sizes)
        for name, _ in order[:removed]:
            counts[name] -= 1
        return cost_of(structure, cost, counts) / original

    if fraction_left(len(order)) > budget:
        raise ValueError(
            f"a {cost} budget of {budget} cannot be met: one element per group still leaves "
            f"{fraction_left(len(order)):.4f} of the original {cost} (the uncompressed layers cost that much)."
        )
    low, high = 0, len(order)  # fraction_left(high) <= budget
    while low < high:
        middle = (low + high) // 2
        if fraction_left(middle) <= budget:
            high = middle
        else:
            low = middle + 1
    return low


def kept_after_removing(structure: Structure, removed: list[tuple[str, int]]) -> Kept:
    """Sorted kept indices of every group once `removed` is taken out."""
    gone: dict[str, set[int]] = {}
    for name, index in removed:
        gone.setdefault(name, set()).add(index)
    return {
        group.name: [i for i in range(group.size) if i not in gone.get(group.name, set())]
        for group in structure.groups
    }


def random_at_counts(structure: Structure, counts: Mapping[str, int], seed: int) -> Kept:
    """`counts[g]` elements of each group g drawn uniformly without replacement (seeded)."""
    check_counts(structure, counts)
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    for group in structure.groups:
        order = torch.randperm(group.size, generator=generator)
        kept[group.name] = sorted(order[: int(counts.get(group.name, group.size))].tolist())
    return kept


def check_counts(structure: Structure, counts: Mapping[str, int]) -> None:
    """Every named group must exist and keep between 1 and its size elements."""
    sizes = structure.group_sizes
    for name, count in counts.items():
        if name not in sizes:
            raise ValueError(f"kept counts name an unknown group {name!r}; groups: {list(sizes)}.")
        if not 1 <= int(count) <= sizes[name]:
            raise ValueError(
                f"group {name!r} must keep between 1 and {sizes[name]} elements, got {count} "
                "(a layer of width 0 would cut the network)."
            )


def counts_of(kept: Mapping[str, list[int]]) -> dict[str, int]:
    return {name: len(indices) for name, indices in kept.items()}
