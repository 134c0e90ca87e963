"""Unstructured global magnitude pruning (weight level, like the paper's DyNS baseline, without splicing).

`global_magnitude_masks` zeroes the smallest-|w| weights of every weight matrix/kernel (every parameter of
dimension ≥ 2, the output layer included) across the whole model, keeping exactly as many as a parameter
budget allows once the dense parameters (biases, BatchNorm) are counted. The model stays dense: its size
gain needs sparse storage (values + indices) and it gives no dense speed-up, so no smaller model is sliced.
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
    magnitudes = torch.cat([weight.detach().abs().flatten() for weight in weights.values()])  # [all weights]
    chosen = torch.zeros_like(magnitudes)
    chosen[torch.topk(magnitudes, keep, sorted=False).indices] = 1.0  # exactly `keep`, ties broken by topk
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = chosen[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
    return masks


def nonzero_params(model: nn.Module, masks: dict[str, Tensor]) -> int:
    """Parameters left: the masks' kept weights plus every unmasked parameter."""
    return sum(
        int(masks[name].sum()) if name in masks else parameter.numel()
        for name, parameter in model.named_parameters()
    )
