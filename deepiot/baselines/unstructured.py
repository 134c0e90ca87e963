"""Unstructured magnitude pruning (weight level, like the paper's DyNS baseline, without splicing).

Both masks zero weights of the weight matrices/kernels (every parameter of dimension ≥ 2, the output layer
included; inside a tensor the smallest |w| go first), keeping exactly as many as a parameter budget allows.
Biases and BatchNorm stay dense and are counted: on DeepSense they are 3,174 parameters (0.98%), so a 1% budget
leaves 49 weights, and no unstructured model exists there (structured pruning drops a channel's bias and
BatchNorm with it).

- `global_magnitude_masks` (method unstructured): one global |w| ranking across the whole model. Weight scales
  differ by layer (initialisation ∝ 1/sqrt(fan-in), which training largely keeps), so a tight budget can empty
  whole layers: on DeepSense at 3% every conv after the first per-sensor one keeps 0 weights (fan-in 320-640,
  |w| ≈ 0.03 against 0.15 for the fan-in-15 first convs), the network's output no longer depends on its input,
  and accuracy is chance (16.8%).
- `GradualPruning` (method unstructured_fair), the fair upper reference: gradual magnitude pruning during
  fine-tuning (Zhu & Gupta, 2017) with LAMP's layer-adaptive global ranking (Lee et al., ICLR 2021), which never
  empties a layer. The first version (per-layer uniform sparsity, one shot) kept 3% of the fan-in-15 first convs
  and of the output layer too and fell to 18–83% on DeepSense at 1–3%, below structured magnitude.

The model stays dense: its size gain needs sparse storage (values + indices) and it gives no dense speed-up, so
no smaller model is sliced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

SPARSE_NOTE = (
    "unstructured (weight-level) sparsity: the model keeps its dense shape; the parameter count is the "
    "nonzero count, which needs sparse storage (values + indices, roughly 2x the nonzero bytes) to save memory "
    "and gives no speed-up with dense kernels (params/MACs/latency of the dense model are unchanged)."
)
GRADUAL_END = 0.5  # unstructured_fair reaches its final sparsity half-way through fine-tuning ...
GRADUAL_UPDATES = 15  # ... in this many mask updates (Zhu & Gupta prune every few hundred steps)


def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """Parameters of dimension ≥ 2 (Linear/Conv weights, RNN weight_ih/hh): the ones unstructured pruning masks."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.dim() >= 2}


def global_magnitude_masks(model: nn.Module, budget: float) -> dict[str, Tensor]:
    """0/1 masks keeping the globally largest-|w| weights so that nonzero params = round(budget · all params).

    Raises ValueError when the dense parameters alone exceed the budget.
    """
    weights, keep = weights_to_keep(model, budget)
    return top_scores_masks(weights, {name: weight.detach().abs() for name, weight in weights.items()}, keep)


def top_scores_masks(weights: dict[str, Tensor], scores: dict[str, Tensor], keep: int) -> dict[str, Tensor]:
    """0/1 masks (the weights' shapes and dtypes) keeping exactly the `keep` highest `scores` across all the
    tensors, one global ranking (ties broken by topk)."""
    flat = torch.cat([scores[name].flatten() for name in weights])  # [all weights]
    chosen = torch.zeros_like(flat)
    chosen[torch.topk(flat, keep, sorted=False).indices] = 1.0
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = chosen[start : start + weight.numel()].view_as(weight).to(weight.dtype)
        start += weight.numel()
    return masks


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP scores of one weight tensor (Lee et al., ICLR 2021), same shape: with the weights sorted by w²
    ascending, weight u scores w_u² / Σ_{v ≥ u} w_v², its share of what is left of the layer once every smaller
    weight is gone. The layer's largest weight scores 1, so a global ranking never empties a layer, and the
    score does not change when a layer's weights are scaled (global |w| ranking empties small-weight layers)."""
    squares = weight.detach().flatten().double() ** 2  # [numel]
    order = torch.argsort(squares, stable=True)
    ascending = squares[order]
    remaining = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])  # Σ_{v ≥ u}, [numel]
    scores = torch.empty_like(squares)
    scores[order] = ascending / remaining.clamp_min(torch.finfo(torch.float64).tiny)
    return scores.view_as(weight)


def lamp_masks(model: nn.Module, keep: int) -> dict[str, Tensor]:
    """0/1 masks keeping the `keep` prunable weights of highest LAMP score (one global ranking); every tensor
    keeps its largest weight as long as `keep` ≥ the number of tensors."""
    weights = prunable_weights(model)
    return top_scores_masks(weights, {name: lamp_scores(weight) for name, weight in weights.items()}, keep)


@dataclass(frozen=True)
class GradualPruning:
    """Gradual magnitude pruning during fine-tuning (Zhu & Gupta, 2017), with LAMP's global ranking.

    The prunable weights kept follow a cubic schedule from all of them at step 0 to `final_keep` at `end_step`,
    keep(t) = final + (all − final)·(1 − t/end)³, the masks recomputed every `every` steps from the current
    weights (pruned weights are 0, so they stay pruned). Only the steps from `end_step` on, at the final
    sparsity, compete for the best validation checkpoint (`deepiot.finetune.finetune`).
    """

    total: int  # prunable weights of the model
    final_keep: int  # prunable weights left at the end
    end_step: int
    every: int

    @classmethod
    def for_budget(cls, model: nn.Module, budget: float, steps: int) -> GradualPruning:
        """The schedule reaching a params budget at `GRADUAL_END` of `steps` in `GRADUAL_UPDATES` updates
        (ValueError when the budget cannot keep one weight per prunable tensor)."""
        weights, keep = weights_to_keep(model, budget)
        if keep < len(weights):
            raise ValueError(
                f"a params budget of {budget} leaves {keep} weights beside the dense parameters, fewer than one "
                f"per weight tensor ({len(weights)}); raise the budget."
            )
        end = max(1, round(GRADUAL_END * steps))
        total = sum(weight.numel() for weight in weights.values())
        return cls(total, keep, end, max(1, end // GRADUAL_UPDATES))

    def keep_at(self, step: int) -> int:
        """Prunable weights kept at `step` (the cubic schedule; `final_keep` from `end_step` on)."""
        progress = min(1.0, step / self.end_step)
        return self.final_keep + round((self.total - self.final_keep) * (1.0 - progress) ** 3)

    def masks_at(self, model: nn.Module, step: int) -> dict[str, Tensor] | None:
        """New masks when the schedule updates at `step` (every `every` steps, and at `end_step`), else None."""
        if step > self.end_step or (step % self.every and step != self.end_step):
            return None
        return lamp_masks(model, self.keep_at(step))

    @staticmethod
    def masks_of(model: nn.Module) -> dict[str, Tensor]:
        """The masks a resumed fine-tuning continues with: the prunable weights that are not exactly 0."""
        return {
            name: (weight.detach() != 0).to(weight.dtype) for name, weight in prunable_weights(model).items()
        }


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
