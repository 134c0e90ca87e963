"""Which hidden elements a structured baseline keeps: `{group name: sorted indices}` for a `Structure`.

Magnitude scores an element by the L1 norm of its column of `structure.importance_matrix` (fan-in weights plus
the bias row, with the BatchNorm that follows a group folded in: the fused layer's weights; for an LSTM/GRU unit
every gate's input, recurrent and bias rows), the criterion of Li et al. (2017, "Pruning filters for efficient
ConvNets") made scale-aware where BatchNorm would otherwise hide a filter's scale. Ways to pick counts:

- given counts per group (`magnitude_at_counts`), or a given fraction per group (`magnitude_at_fraction`);
- `magnitude_at_budget`: a global budget (params/MACs/... fraction) met by removing the globally weakest element
  (scores normalised per group) one at a time. Every group keeps at least one element (a layer of width 0 would
  cut the network) — and nothing more: a group can collapse to one element (LeNet-300-100's fc2 at 2%);
- `magnitude_floor_at_budget` (method magnitude_floor): the same global ranking, but each group's `floor`
  strongest elements are left out of the removal order, so no group ends below its floor (`default_floors`:
  uniform width at half the budget, raised towards the class count);
- `uniform_at_budget` (method uniform): the same kept fraction in every group, the largest whose structure
  meets the budget (bisection over the fraction on the real cost), the L1-largest elements of each group.

Random keeps random elements at given counts (a control).
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
    """`Structure.l1_importance` of every group: {name: [size]}."""
    return {group.name: structure.l1_importance(model, group.name) for group in structure.groups}


def magnitude_at_counts(model: nn.Module, structure: Structure, counts: Mapping[str, int]) -> Kept:
    """The `counts[g]` largest-L1 elements of each group g (groups not named keep everything)."""
    check_counts(structure, counts)
    return {
        group.name: structure.largest_l1_elements(model, group.name, int(counts.get(group.name, group.size)))
        for group in structure.groups
    }


def magnitude_at_fraction(model: nn.Module, structure: Structure, fraction: float) -> Kept:
    """The largest-L1 round(fraction·size) elements (at least one) of every group."""
    return magnitude_at_counts(model, structure, uniform_counts(structure, fraction))


def uniform_counts(structure: Structure, fraction: float) -> dict[str, int]:
    """round(fraction·size), at least 1, for every group; ValueError unless 0 < fraction <= 1."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the kept fraction per group must be in (0, 1], got {fraction}.")
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
    check_budget(budget, cost, normalizer)
    order = removal_order(l1_scores(model, structure), normalizer)
    removed = shortest_prefix_within_budget(structure, order, budget, cost)
    return kept_after_removing(structure, order[:removed])


def check_budget(budget: float, cost: str, normalizer: str = "mean") -> None:
    """ValueError unless `cost` is a structure cost, `normalizer` known and 0 < budget <= 1."""
    if cost not in COSTS:
        raise ValueError(f"the budget cost must be one of {', '.join(COSTS)}, got {cost!r}.")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"the score normalizer must be one of {', '.join(NORMALIZERS)}, got {normalizer!r}.")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"the budget is the fraction of the original {cost} left, in (0, 1]; got {budget}.")


def removal_order(
    scores: Mapping[str, torch.Tensor], normalizer: str, protected: Mapping[str, int] | None = None
) -> list[tuple[str, int]]:
    """(group, index) pairs from the weakest normalised score up; each group's `protected[g]` strongest
    elements (by L1, ties → lower index; default and at least 1) are left out, so it never drops below them."""
    candidates = []
    for name, values in scores.items():
        scale = values.mean() if normalizer == "mean" else values.max()
        normalised = values / scale.clamp_min(torch.finfo(values.dtype).tiny)  # [size]
        keep = max(1, int((protected or {}).get(name, 1)))
        strongest = set(torch.argsort(values, descending=True, stable=True)[:keep].tolist())
        candidates += [(float(normalised[i]), name, i) for i in range(len(values)) if i not in strongest]
    candidates.sort()  # ties: group name, then index
    return [(name, index) for _, name, index in candidates]


FLOOR_SHARE = 0.5  # the default floors may cost at most this share of the budget (the rest: the ranking's)


def magnitude_floor_at_budget(
    model: nn.Module,
    structure: Structure,
    budget: float,
    cost: str = "params",
    normalizer: str = "mean",
    floor: int | Mapping[str, int] | None = None,
) -> Kept:
    """`magnitude_at_budget` with a per-group floor: group g keeps at least `floors[g]` elements (its strongest
    by L1 are left out of the removal order), then the same shortest prefix within the budget.

    `floor`: None → `default_floors` (uniform width, then the class count, within half the budget); an int →
    that floor in every group (capped at the group's size); a mapping → per group (unnamed groups: 1).
    ValueError when the floors alone exceed the budget.
    """
    check_budget(budget, cost, normalizer)
    floors = resolve_floors(model, structure, budget, cost, floor)
    original = cost_of(structure, cost, structure.group_sizes)
    floor_left = cost_of(structure, cost, floors) / original
    if floor_left > budget:
        raise ValueError(
            f"the per-group floor {floors} alone leaves {floor_left:.4f} of the original {cost}, over the budget "
            f"of {budget}: lower method.floor (an int for every group, or {{group: count}}) or raise the budget."
        )
    order = removal_order(l1_scores(model, structure), normalizer, protected=floors)
    removed = shortest_prefix_within_budget(structure, order, budget, cost)
    return kept_after_removing(structure, order[:removed])


def resolve_floors(
    model: nn.Module, structure: Structure, budget: float, cost: str, floor: int | Mapping[str, int] | None
) -> dict[str, int]:
    """{group: floor} from method.floor (None: `default_floors`); ValueError for a floor outside [1, size]."""
    if floor is None:
        return default_floors(structure, output_width(model, structure), budget, cost)
    if isinstance(floor, Mapping):
        check_counts(structure, floor)
        return {group.name: int(floor.get(group.name, 1)) for group in structure.groups}
    if isinstance(floor, bool) or int(floor) != floor or int(floor) < 1:
        raise ValueError(
            f"method.floor must be a positive int, a {{group: count}} mapping or null; got {floor!r}."
        )
    return {group.name: min(group.size, int(floor)) for group in structure.groups}


def default_floors(
    structure: Structure, classes: int, budget: float, cost: str, share: float = FLOOR_SHARE
) -> dict[str, int]:
    """The default floor: uniform width at `share` × budget, then raised towards min(size, classes) per group, as
    far as the floors together cost at most `share` × budget of the original `cost`.

    Uniform width first, because the groups differ in kind: on DeepSense (CNN + GRU) BatchNorm-folded conv scores
    spread over 0.5-1.65 of their mean while the GRU units sit within 0.96-1.04, so the mean-normalised ranking
    empties the GRU layers first, and a floor of the class count alone (6 units per group) still left 62.8% at 3%
    (uniform width: 94.2%). With the floors at uniform width for half the budget no group ends narrower than
    that, and the other half is the magnitude ranking's.

    Then the class count: a hidden layer narrower than the number of classes is a bottleneck every class must
    pass through (the logit layer reads all of them from it), which is how magnitude's collapse to one element
    fails (LeNet-300-100's fc2 at 2%: 21% accuracy; uniform width at 1% keeps fc2 at 1 unit). A fixed floor
    cannot always be paid for: at 1-3.5% of LeNet-300-100's params, ten fc1 units (784 inputs each, 3% of the
    parameters) are already over the budget. So the floors are raised together towards min(size, classes), one
    step per round in forward order; a group whose next step would bring the floors' cost over `share` × budget
    stops there (later rounds cost more). Cheap groups reach the class count, expensive ones stay where uniform
    width left them (LeNet-300-100 at 2% params: fc1 3, fc2 10). The floors never exceed the budget by
    construction (one element per group aside, which `shortest_prefix_within_budget` reports).
    """
    try:
        floors = uniform_counts(structure, uniform_fraction_at_budget(structure, share * budget, cost))
    except ValueError:  # one element per group is already over share × budget
        return {group.name: 1 for group in structure.groups}
    original = cost_of(structure, cost, structure.group_sizes)
    limit = share * budget * original
    growing = [group for group in structure.groups if floors[group.name] < min(group.size, classes)]
    for step in range(2, classes + 1):
        for group in list(growing):
            if floors[group.name] >= step:
                continue
            trial = {**floors, group.name: step}
            if cost_of(structure, cost, trial) > limit:
                growing.remove(group)
                continue
            floors = trial
            if step >= min(group.size, classes):
                growing.remove(group)
        if not growing:
            break
    return floors


def output_width(model: nn.Module, structure: Structure) -> int:
    """The number of classes: the last dimension of the model's output on the structure's example inputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(*structure.example_inputs)
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() < 1:
        raise ValueError(
            "the default per-group floor is the number of classes, read from the model's output (a Tensor "
            f"[N, classes]); got {type(output).__name__}. Set method.floor explicitly."
        )
    return int(output.shape[-1])


UNIFORM_BISECTION_TOLERANCE = 1e-12


def uniform_fraction_at_budget(structure: Structure, budget: float, cost: str = "params") -> float:
    """The largest kept fraction f (within 1e-12) whose `uniform_counts(structure, f)` costs at most `budget`
    of the original `cost` (bisection: the cost never falls as f grows); ValueError when even one element per
    group costs more."""
    check_budget(budget, cost)
    original = cost_of(structure, cost, structure.group_sizes)

    def fits(fraction: float) -> bool:
        return cost_of(structure, cost, uniform_counts(structure, fraction)) <= budget * original

    if fits(1.0):
        return 1.0
    smallest = min(1.0, 0.5 / max(group.size for group in structure.groups))  # rounds every group to 1
    if not fits(smallest):
        left = cost_of(structure, cost, uniform_counts(structure, smallest)) / original
        raise ValueError(
            f"a {cost} budget of {budget} cannot be met: one element per group still leaves {left:.4f} of the "
            f"original {cost} (the uncompressed layers cost that much)."
        )
    low, high = smallest, 1.0  # fits(low), not fits(high)
    while high - low > UNIFORM_BISECTION_TOLERANCE:
        middle = (low + high) / 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def uniform_at_budget(model: nn.Module, structure: Structure, budget: float, cost: str = "params") -> Kept:
    """Uniform width: the L1-largest elements of every group at `uniform_fraction_at_budget`."""
    return magnitude_at_fraction(model, structure, uniform_fraction_at_budget(structure, budget, cost))


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
