"""The public face of discovery: `Group` and `Structure` (groups, compressor weights, structure cost)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
from torch import Tensor, nn

from deepiot.cost.types import Cost
from deepiot.structure.discovery import Discovery, ExampleInputs, StructureData, graph_signature, trace
from deepiot.structure.errors import StructureError
from deepiot.structure.layout import Segment
from deepiot.structure.recurrent import rnn_weight_matrix
from deepiot.structure.rules import node_info

KeptCounts = Mapping[str, int | Tensor]
KeptIndices = Mapping[str, Sequence[int] | Tensor]


@dataclass(frozen=True)
class Group:
    """Hidden elements that share one mask: the output units of `modules` (producer ids, forward order).

    `name` is the first producer's qualified module name ("conv1", "features.0"); an LSTM/GRU/RNN layer i of
    module "gru" is the producer "gru.l0", "gru.l1", ... (both directions of a layer share its units).
    """

    name: str
    kind: Literal["linear", "conv", "rnn"]
    size: int
    modules: tuple[str, ...]


class Structure:
    """Compressible hidden-element groups of a model, found by tracing it (see `from_model`).

    Attributes:
        groups: the groups in forward order; the logit layer (and anything reaching the output) never appears.
        excluded: producer id → why it is not compressible (reaches the output, excluded by the caller, ...).
    """

    def __init__(self, data: StructureData, example_inputs: tuple[Tensor, ...]) -> None:
        self.groups = [Group(name, kind, size, modules) for name, kind, size, modules in data.groups]
        self.excluded = dict(data.excluded)
        self.example_inputs = tuple(value.detach().clone() for value in example_inputs)
        self.data = data
        self._by_name = {group.name: group for group in self.groups}

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_inputs: ExampleInputs,
        declared: Sequence[Sequence[str]] | None = None,
        *,
        exclude: Sequence[str] = (),
    ) -> Structure:
        """Discover the groups of `model` by tracing it and running it on `example_inputs` (batch first).

        Producers: nn.Linear, nn.Conv1d/2d/3d (groups=1), nn.LSTM/nn.GRU/nn.RNN (one group per layer), except
        those whose values reach the model output. Followed through: BatchNorm, activations, dropout,
        pooling, LayerNorm/softmax over other dims, flatten/view/reshape/transpose/permute/(un)squeeze,
        indexing and reductions over other dims, cat (channel dim: segments join; other dims: groups
        merge), residual add/sub/mul/div (groups merge), size queries. Grouped/depthwise convolutions,
        LSTM c_n, an explicit RNN hx and unknown ops raise on a group's channels (never a silent skip).

        Args:
            model: the network; it is run twice in eval mode (training flags restored), never modified.
            example_inputs: a tensor or tuple of tensors, batch as dim 0 (any batch size, e.g. 2).
            declared: producer-name lists whose elements must share one mask (sizes must match), on top
                of what discovery merges itself (residual adds, elementwise products, ...).
            exclude: producers to keep uncompressed: module names, or "<rnn>.l<i>" for one RNN layer.
                Their outputs then carry no group, so ops discovery does not understand may follow them.

        Raises:
            StructureError: an op or module touching a group's channels is not understood (the message
                names the node, its type and the `exclude=` that works around it).
        """
        _check_from_model_arguments(model, declared, exclude)
        discovery = Discovery(model, example_inputs, exclude)
        discovery.run(node_info)
        return cls(discovery.resolve(declared or []), discovery.inputs)

    def __repr__(self) -> str:
        lines = [f"  {g.name}: {g.kind} × {g.size}" + (f" {list(g.modules)}" if len(g.modules) > 1 else "")
                 for g in self.groups]  # fmt: skip
        return "Structure(\n" + "\n".join(lines) + "\n)"

    @property
    def group_sizes(self) -> dict[str, int]:
        """Group name → number of hidden elements."""
        return {group.name: group.size for group in self.groups}

    def group(self, name: str) -> Group:
        """The group called `name` (StructureError listing the valid names otherwise)."""
        if name not in self._by_name:
            raise StructureError(f"no group named {name!r}; groups: {list(self._by_name)}.")
        return self._by_name[name]

    def weight_matrix(self, model: nn.Module, name: str) -> Tensor:
        """The compressor's view of group `name`: W [fan-in rows incl. one bias row, size], detached.

        Linear: cat(W.T, b) → [in + 1, out]; Conv: kernel as [in·∏k, out] plus the bias row; RNN layer:
        `rnn_weight_matrix` (gate blocks stacked, both directions); several producers: rows concatenated.
        `model` is any instance of the discovered architecture (e.g. the critic as it trains).
        """
        blocks = []
        for producer_id in self.group(name).modules:
            producer = self.data.producers[producer_id]
            module = model.get_submodule(producer.module)
            if producer.kind == "rnn":
                blocks.append(rnn_weight_matrix(module, producer.layer))
                continue
            weight = module.weight.detach()
            bias = module.bias.detach() if module.bias is not None else weight.new_zeros(weight.shape[0])
            blocks.append(
                torch.cat([weight.reshape(weight.shape[0], -1).t(), bias[None, :]])
            )  # [fan_in+1, out]
        return torch.cat(blocks)

    def importance_matrix(self, model: nn.Module, name: str) -> Tensor:
        """The magnitude criterion's view of group `name`: `weight_matrix` as the model computes it once the
        BatchNorm that normalises the group's channels is folded in (where there is one).

        BatchNorm makes a filter's output independent of its weights' scale: BN(c·w∗x) = BN(w∗x), so the L1 of
        raw conv weights followed by BatchNorm says nothing about what the filter contributes. Folding gives
        the weights of the equivalent fused layer, w' = s·w and b' = s·(Σb − μ) + β with s = γ/√(σ² + ε) per
        channel (one bias row for the group; several producers' biases add up before the BatchNorm). Its L1
        is |γ|·‖w‖₁/σ: not Network Slimming's |γ| (Liu et al., ICCV 2017), and with γ ≈ 1 (trained without a
        sparsity penalty) it favours channels of small pre-BatchNorm spread σ. Neither criterion is reliable on
        DeepSense: at magnitude_floor's 3% counts the folded L1 and the raw L1 each collapse on some of the 5
        HAPT folds (validation mean 88.3% against 86.9%, which is why the folded one stays), where random
        elements at the same counts do not (docs/design.md §5). Without a BatchNorm on the group:
        `weight_matrix` unchanged.
        """
        norm = self.batchnorm_of(model, name)
        if norm is None:
            return self.weight_matrix(model, name)
        producers = [model.get_submodule(self.data.producers[i].module) for i in self.group(name).modules]
        ones = producers[0].weight.new_ones(
            self.group(name).size
        )  # BatchNorm's defaults, on the model's device
        zeros = torch.zeros_like(ones)
        variance = norm.running_var if norm.running_var is not None else ones
        mean = norm.running_mean if norm.running_mean is not None else zeros
        gamma = norm.weight if norm.weight is not None else ones
        beta = norm.bias if norm.bias is not None else zeros
        scale = (gamma / torch.sqrt(variance + norm.eps)).detach()
        weights = [module.weight.detach().reshape(len(ones), -1).t() * scale for module in producers]
        bias = sum((module.bias.detach() for module in producers if module.bias is not None), zeros)
        folded_bias = scale * (bias - mean.detach()) + beta.detach()
        return torch.cat([*weights, folded_bias[None, :]])

    def batchnorm_of(self, model: nn.Module, name: str) -> nn.modules.batchnorm._BatchNorm | None:
        """The BatchNorm module whose channels are exactly group `name`'s elements (the first in forward order
        if several), or None: recurrent groups and groups without one."""
        group = self.group(name)
        if group.kind == "rnn":
            return None
        whole = (Segment(name, group.size),)
        for module_name, use in self.data.module_uses.items():
            if use.kind == "batchnorm" and use.input == whole:
                return model.get_submodule(module_name)
        return None

    def l1_importance(self, model: nn.Module, name: str) -> Tensor:
        """The magnitude criterion: the L1 norm of every element's `importance_matrix` column, [size]."""
        return self.importance_matrix(model, name).abs().sum(dim=0)

    def largest_l1_elements(self, model: nn.Module, name: str, count: int) -> list[int]:
        """Sorted indices of the `count` elements of group `name` with the largest `l1_importance` (the
        magnitude criterion, BatchNorm folded in; ties → lower index)."""
        order = torch.argsort(self.l1_importance(model, name), descending=True, stable=True)
        return sorted(order[:count].tolist())

    def cost(self, kept: KeptCounts | None = None) -> Cost:
        """Params, MACs, activation bytes and model bytes (batch 1) with `kept[g]` elements left in group g.

        Counts are ints, or Tensors [N] (one per sampled structure: the result fields are float Tensors [N]);
        missing groups keep every element. Computed from the shapes recorded at discovery, no slicing.
        """
        if self.data.cost_model.unknown_macs:
            raise StructureError(
                f"structure cost: the MACs of {list(self.data.cost_model.unknown_macs)} are not defined by the "
                "cost contract (it counts Linear, Conv1d/2d/3d and LSTM/GRU/RNN compute; normalisation and "
                "embeddings count 0). Rewrite these modules with supported layers (e.g. in a custom module "
                "whose forward uses them), so that their compute can be counted and sliced."
            )
        counts: dict[str, int | Tensor] = dict(self.group_sizes)
        for name, count in (kept or {}).items():
            size = self.group(name).size
            if isinstance(count, Tensor):
                counts[name] = count.detach().to(torch.float64)
                bad = bool(((counts[name] < 0) | (counts[name] > size)).any())
            else:
                counts[name], bad = int(count), not 0 <= int(count) <= size
            if bad:
                raise StructureError(f"kept count of group {name!r} must lie in [0, {size}], got {count!r}.")
        return self.data.cost_model.evaluate(counts)

    def kept_indices(self, kept: KeptIndices) -> dict[str, Tensor]:
        """Validated kept indices for every group (missing groups keep everything), as int64 Tensors.

        Each entry is a sorted list of distinct indices in [0, size) with at least one element, or a bool
        Tensor [size] marking the kept elements.
        """
        unknown = sorted(set(kept) - set(self._by_name))
        if unknown:
            raise StructureError(f"kept names unknown groups {unknown}; groups: {list(self._by_name)}.")
        indices = {group.name: torch.arange(group.size) for group in self.groups}
        for name, value in kept.items():
            indices[name] = _checked_indices(name, value, self._by_name[name].size)
        return indices

    def masks_from_kept(
        self, kept: KeptIndices, device: torch.device | str | None = None
    ) -> dict[str, Tensor]:
        """Hard 0/1 masks [size] equivalent to keeping `kept` (every group present), on `device` (default CPU)."""
        masks = {}
        for name, indices in self.kept_indices(kept).items():
            masks[name] = torch.zeros(self._by_name[name].size, device=device)
            masks[name][indices.to(masks[name].device)] = 1.0
        return masks

    def trace_matching(self, model: nn.Module) -> fx.GraphModule:
        """Trace `model` and check it is the architecture this structure was discovered on.

        Functional dropout (`F.dropout(x, training=self.training)`) is re-bound to the traced module's
        own train/eval flag: tracing would otherwise freeze the mode the model happened to be in.
        """
        graph_module = trace(model)
        if graph_signature(graph_module) != self.data.signature:
            raise StructureError(
                f"{type(model).__name__} does not trace to the graph this Structure was discovered on (different "
                "architecture or widths); call Structure.from_model on this model."
            )
        _bind_functional_dropout(graph_module)
        return graph_module


def _bind_functional_dropout(graph_module: fx.GraphModule) -> None:
    """Make every functional dropout read `graph_module.training` at run time instead of a traced constant."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        name = getattr(node.target, "__name__", "") if node.op == "call_function" else ""
        if name not in FUNCTIONAL_DROPOUTS:
            continue
        with graph.inserting_before(node), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Attempted to insert a get_attr Node"
            )  # a bool, not a tensor
            training = graph.get_attr("training")
        flag, position = FUNCTIONAL_DROPOUTS[name]
        if len(node.args) > position:
            node.update_arg(position, training)
        else:
            node.update_kwarg(flag, training)
    graph_module.recompile()


# Functional dropouts: name → (keyword of the train flag, its position).
FUNCTIONAL_DROPOUTS = {
    **{name: ("training", 2) for name in ("dropout", "alpha_dropout", "feature_alpha_dropout")},
    **{name: ("training", 2) for name in ("dropout1d", "dropout2d", "dropout3d")},
}


def _checked_indices(name: str, value: Sequence[int] | Tensor, size: int) -> Tensor:
    """Kept indices of group `name` as a sorted int64 Tensor, or StructureError explaining what is wrong."""
    indices = torch.as_tensor(value)
    if indices.numel() == 0:
        raise StructureError(
            f"group {name!r} keeps zero elements; at least one must stay (removing a whole layer would cut "
            "the network)."
        )
    if indices.dtype == torch.bool:
        if indices.shape != (size,):
            raise StructureError(
                f"kept mask of group {name!r} must have shape [{size}], got {tuple(indices.shape)}."
            )
        indices = indices.nonzero().flatten()
    elif indices.is_floating_point() or indices.dim() != 1:
        raise StructureError(f"kept indices of group {name!r} must be a 1-D list of ints, got {value!r}.")
    if len(indices) == 0:
        raise StructureError(f"group {name!r} keeps zero elements (its bool mask is all False).")
    if indices.min() < 0 or indices.max() >= size:
        raise StructureError(
            f"kept indices of group {name!r} must lie in [0, {size}), got {indices.tolist()}."
        )
    if not bool((indices[1:] > indices[:-1]).all()):
        raise StructureError(
            f"kept indices of group {name!r} must be sorted and distinct, got {indices.tolist()}."
        )
    return indices.long()


def _check_from_model_arguments(model: Any, declared: Any, exclude: Any) -> None:
    """Reject a non-module model, and a string `declared` / `exclude` (it would be read letter by letter)."""
    if not isinstance(model, nn.Module):
        raise StructureError(
            f"Structure.from_model needs an nn.Module (a model whose forward returns logits), got "
            f"{type(model).__name__}."
        )
    for name, value, example in (("exclude", exclude, "['fc1']"), ("declared", declared, "[['a', 'b']]")):
        if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset | None):
            raise StructureError(
                f"Structure.from_model: {name} must be a list of producer names (e.g. {name}={example}), "
                f"got {type(value).__name__} {value!r}."
            )
