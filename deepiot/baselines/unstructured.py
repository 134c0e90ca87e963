"""Unstructured magnitude pruning (weight level, like the paper's DyNS baseline, without splicing).

Both masks zero the smallest-|w| weights of the weight matrices/kernels (every parameter of dimension ≥ 2, the
output layer included; biases and BatchNorm stay dense and are counted), keeping exactly as many as a parameter
budget allows:

- `global_magnitude_masks` (method unstructured): one global |w| ranking across the whole model. Weight scales
  differ by layer (initialisation ∝ 1/sqrt(fan-in), which training largely keeps), so a tight budget can empty
  whole layers: on DeepSense at 3% every conv after the first per-sensor one keeps 0 weights (fan-in 320-640,
  |w| ≈ 0.03 against 0.15 for the fan-in-15 first convs), the network's output no longer depends on its input,
  and accuracy is chance (16.8%).
- `layerwise_magnitude_masks` (method unstructured_fair): per-layer uniform sparsity, the fair upper reference:
  every weight tensor keeps the same fraction of its weights (its largest |w|; counts apportioned so that the
  total is exact), at least one weight each, so no layer is emptied.

The model stays dense: its size gain needs sparse storage (values + indices) and it gives no dense speed-up, so
no smaller model is sliced.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SPARSE_NOTE = (
    "unstructured (weight-level) sparsity: the model keeps its dense shape; the parameter count is the "
    "nonzero count, which needs sparse storage (values + indices, roughly 2x the nonzero bytes) to save memory "
    "and gives no speed-up with dense kernels (params/MACs/latency of the dense model are unchanged)."
)


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """Parameters of dimension ≥ 2 (Linear/Conv weights, RNN weight_ih/hh): the ones unstructured pruning masks."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.dim() >= 2}


def global_magnitude_masks(model: nn.Module, budget: float) -> dict[str, Tensor]:
    """0/1 masks keeping the globally largest-|w| weights so that nonzero params = round(budget · all params).

    Raises ValueError when the dense parameters alone exceed the budget.
    """
    weights, keep = weights_to_keep(model, budget)
    magnitudes = torch.cat([weight.detach().abs().flatten() for weight in weights.values()])  # [all weights]
    chosen = torch.zeros_like(magnitudes)
    chosen[torch.topk(magnitudes, keep, sorted=False).indices] = 1.0  # exactly `keep`, ties broken by topk
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = chosen[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
    return masks


def layerwise_magnitude_masks(model: nn.Module, budget: float) -> dict[str, Tensor]:
    """0/1 masks keeping the same fraction of every weight tensor (its largest |w|), at least one weight each,
    with nonzero params = round(budget · all params) exactly.

    The weights left after the dense parameters, K, are apportioned to the tensors in proportion to their
    sizes (largest remainders; a tensor whose share rounds to 0 gets 1, taken from the largest shares).
    Raises ValueError when the dense parameters plus one weight per tensor exceed the budget.
    """
    weights, keep = weights_to_keep(model, budget)
    if keep < len(weights):
        raise ValueError(
            f"a params budget of {budget} leaves {keep} weights beside the dense parameters, fewer than one per "
            f"weight tensor ({len(weights)}); raise the budget."
        )
    sizes = {name: weight.numel() for name, weight in weights.items()}
    counts = apportion(keep, sizes)
    masks = {}
    for name, weight in weights.items():
        magnitudes = weight.detach().abs().flatten()  # [numel]
        mask = torch.zeros_like(magnitudes)
        mask[torch.topk(magnitudes, counts[name], sorted=False).indices] = 1.0
        masks[name] = mask.view_as(weight)
    return masks


def apportion(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Integer shares of `total` proportional to `sizes` (largest remainders), each in [1, size], summing to
    `total` (1 ≤ len(sizes) ≤ total ≤ sum(sizes))."""
    whole = sum(sizes.values())
    exact = {name: total * size / whole for name, size in sizes.items()}
    counts = {name: max(1, int(value)) for name, value in exact.items()}
    # most short-changed first
    by_remainder = sorted(sizes, key=lambda name: (counts[name] - exact[name], name))
    index = 0
    while sum(counts.values()) < total:
        name = by_remainder[index % len(by_remainder)]
        if counts[name] < sizes[name]:
            counts[name] += 1
        index += 1
    # most over-served first
    by_excess = sorted(sizes, key=lambda name: (exact[name] - counts[name], name))
    index = 0
    while sum(counts.values()) > total:  # only when shares of 0 were raised to 1
        name = by_excess[index % len(by_excess)]
        if counts[name] > 1:
            counts[name] -= 1
        index += 1
    return counts


def weights_to_keep(model: nn.Module, budget: float) -> tuple[dict[str, Tensor], int]:
    """(the prunable weights, how many of them a params budget keeps once the dense parameters are counted)."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"the params budget is the fraction of parameters left, in (0, 1]; got {budget}.")
    weights = prunable_weights(model)
    total = sum(parameter.numel() for parameter in model.parameters())
    dense = total - sum(weight.numel() for weight in weights.values())
    keep = round(budget * total) - dense
    if keep < 1:
        raise ValueError(
            f"a params budget of {budget} ({round(budget * total)} parameters) is below the {dense} parameters "
            "unstructured pruning leaves dense (biases, normalisation); raise the budget."
        )
    return weights, keep


def nonzero_params(model: nn.Module, masks: dict[str, Tensor]) -> int:
    """Parameters left: the masks' kept weights plus every unmasked parameter."""
    return sum(
        int(masks[name].sum()) if name in masks else parameter.numel()
        for name, parameter in model.named_parameters()
    )
