"""A third-party reference: Torch-Pruning's global group-magnitude pruner (DepGraph, Fang et al., CVPR 2023).

`torch_pruning_kept` runs `torch_pruning.pruner.MagnitudePruner` with `GroupMagnitudeImportance` and global
pruning on a copy of the model, searching its channel pruning ratio by bisection until the pruned model's
parameters (or MACs) fit the budget, and reads which output channels it removed. Its choice becomes a kept set
for our own slicing path; its own parameter count is returned alongside for comparison. Recurrent models are
refused: Torch-Pruning 1.6.1 mis-slices LSTM hidden units and leaves GRUs unpruned (docs/design.md §5).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

from deepiot.structure import Structure

BISECTION_STEPS = 30


class ReferenceChoice(NamedTuple):
    """Torch-Pruning's kept set (our group names) and its own counts of the pruned model."""

    kept: dict[str, list[int]]
    pruning_ratio: float  # the global channel ratio that met the budget
    params: int  # torch_pruning.utils.count_ops_and_params on its pruned model
    macs: int


def check_supported(model: nn.Module) -> None:
    """Refuse models with recurrent layers (Torch-Pruning cannot prune them correctly)."""
    recurrent = [name for name, module in model.named_modules() if isinstance(module, nn.RNNBase)]
    if recurrent:
        raise ValueError(
            f"method torch_pruning handles Conv/Linear/BatchNorm models only, but {type(model).__name__} has "
            f"recurrent layers {recurrent}: Torch-Pruning 1.6.1 mis-slices LSTM hidden units and leaves GRUs "
            "unpruned. Use method=magnitude (our slicing handles LSTM/GRU) for this model."
        )


def torch_pruning_kept(
    model: nn.Module, structure: Structure, example_inputs: Tensor, budget: float, cost: str = "params"
) -> ReferenceChoice:
    """The largest global channel-pruning ratio whose pruned model keeps at most `budget` of the original cost."""
    import torch_pruning  # optional dependency, imported only when this method is used

    check_supported(model)
    inputs = example_inputs[:1]
    original_macs, original_params = torch_pruning.utils.count_ops_and_params(model, inputs)
    original = {"params": original_params, "macs": original_macs}[cost]
    low, high = 0.0, 1.0  # low meets nothing yet (ratio 0 = unpruned), high is tried last
    best = None
    for _ in range(BISECTION_STEPS):
        ratio = (low + high) / 2
        choice = prune_at_ratio(torch_pruning, model, structure, inputs, ratio)
        if choice is not None and getattr(choice, cost) <= budget * original:
            best, high = choice, ratio
        else:
            low = ratio
    if best is None:
        raise ValueError(
            f"Torch-Pruning could not bring {type(model).__name__} to {budget} of its {cost}: even its highest "
            "global pruning ratio leaves more (or empties a layer)."
        )
    return best


def prune_at_ratio(
    torch_pruning, model: nn.Module, structure: Structure, inputs: Tensor, ratio: float
) -> ReferenceChoice | None:
    """Prune a copy at one global ratio; None when a group would lose every element."""
    pruned = copy.deepcopy(model).eval()
    names = {module: name for name, module in pruned.named_modules()}
    producer_group = group_of_producer_module(structure)
    outputs = [pruned.get_submodule(name) for name in output_modules(structure, pruned)]
    pruner = torch_pruning.pruner.MagnitudePruner(
        pruned,
        inputs,
        importance=torch_pruning.importance.GroupMagnitudeImportance(),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=outputs,
    )
    removed: dict[str, set[int]] = {}
    for group in pruner.step(interactive=True):
        for dependency, indices in group:
            module_name = names.get(dependency.target.module)
            if module_name in producer_group and pruner.DG.is_out_channel_pruning_fn(dependency.handler):
                removed.setdefault(producer_group[module_name], set()).update(int(i) for i in indices)
        group.prune()
    kept = {
        group.name: [i for i in range(group.size) if i not in removed.get(group.name, set())]
        for group in structure.groups
    }
    if any(not indices for indices in kept.values()):
        return None
    macs, params = torch_pruning.utils.count_ops_and_params(pruned, inputs)
    return ReferenceChoice(kept, ratio, int(params), int(macs))


def group_of_producer_module(structure: Structure) -> dict[str, str]:
    """Module name → the group its output channels belong to."""
    mapping = {}
    for group in structure.groups:
        for producer_id in group.modules:
            mapping[structure.data.producers[producer_id].module] = group.name
    return mapping


def output_modules(structure: Structure, model: nn.Module) -> list[str]:
    """Linear/Conv modules outside every group (the logit layer and what reaches the output): never pruned."""
    grouped = set(group_of_producer_module(structure))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and name not in grouped
    ]


def count_with_torch_pruning(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(params, MACs) of `model` by Torch-Pruning's own counter."""
    import torch_pruning

    with torch.no_grad():
        macs, params = torch_pruning.utils.count_ops_and_params(model.eval(), example_inputs[:1])
    return int(params), int(macs)
