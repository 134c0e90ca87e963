"""Masked execution of the critic: hidden elements multiplied by per-sample masks, once on every path.

Mask placement rule: a group's values are multiplied by its mask where they ENTER A CONSUMER (Linear,
Conv, LSTM/GRU/RNN input) — after every channel-preserving op (BN, activation, pooling, residual add,
flatten, cat). On the chain conv → BN → act → pool → consumer this is the paper's "dropout after the
activation"; and because a consumer is linear in each input channel, a 0 there is exactly the channel
removed, whatever came before (sigmoid(0) = 0.5 never leaks, BN after an add is fine). RNN hidden units
are masked inside the recurrence instead (`masked_rnn_forward`), and not again downstream — except that a
unit masked to 0 is re-zeroed at a consumer when a non-zero-preserving op (e.g. sigmoid) came in between.

The multiplications are inserted once into a `torch.fx` GraphModule that shares the model's modules.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx as fx
from torch import Generator, Tensor, nn

from deepiot.structure.discovery import MaskSpec
from deepiot.structure.errors import StructureError
from deepiot.structure.graph import Structure
from deepiot.structure.recurrent import masked_rnn_forward

Masks = Mapping[str, Tensor]


def apply_layout_mask(value: Tensor, masks: Masks, spec: MaskSpec) -> Tensor:
    """value · mask laid out along the channel dim (segments repeated/concatenated as the layout says).

    Shapes: masks[g] is [N, size] or [size]; the layout mask [N|1, C] is reshaped to broadcast, e.g.
    [N, C, 1, 1] for conv2d inputs, [N, C, 1] for conv1d, [N, C] for linear, [N, 1, C] for [N, T, C].
    """
    segments, channel_dim, batch_dim = spec
    parts: list[tuple[Tensor | None, int, int]] = []
    for group, count, repeat, mode in segments:
        mask = masks.get(group) if mode != "none" else None
        if mask is not None:
            mask = mask.to(value.dtype) if mode == "mask" else (mask != 0).to(value.dtype)
            mask = mask if mask.dim() == 2 else mask[None, :]  # [N | 1, count]
        parts.append((mask, count, repeat))
    if all(mask is None for mask, _, _ in parts):
        return value
    layout_mask = _concatenate(parts)  # [N | 1, C]
    shape = [1] * value.dim()
    shape[channel_dim] = layout_mask.shape[1]
    if layout_mask.shape[0] > 1:
        shape[batch_dim] = layout_mask.shape[0]
        if batch_dim > channel_dim:
            layout_mask = layout_mask.t()  # [C, N]: same order as the value's dims
    return value * layout_mask.reshape(shape)


def _concatenate(parts: list[tuple[Tensor | None, int, int]]) -> Tensor:
    """Segment masks (None = ones) repeated `repeat` times per element and joined: [N | 1, C]."""
    if len(parts) == 1 and parts[0][2] == 1:
        return parts[0][0]
    batch = max(mask.shape[0] for mask, _, _ in parts if mask is not None)
    reference = next(mask for mask, _, _ in parts if mask is not None)
    pieces = []
    for mask, count, repeat in parts:
        mask = reference.new_ones(1, count) if mask is None else mask
        mask = mask.expand(batch, count)  # [N, count]
        if repeat > 1:  # [N, count, 1] → [N, count, repeat] → [N, count·repeat], channel-major
            mask = mask[:, :, None].expand(batch, count, repeat).reshape(batch, count * repeat)
        pieces.append(mask)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def masked_rnn_call(
    module: nn.Module, x: Tensor, masks: Masks, layer_groups: tuple[str | None, ...]
) -> tuple[Tensor, Tensor | tuple]:
    """The RNN call with each layer's hidden mask (None when its group is absent or not compressible)."""
    hidden_masks = [masks.get(group) if group is not None else None for group in layer_groups]
    if all(mask is None for mask in hidden_masks):
        return module(x)  # the fused kernel: nothing to mask
    return masked_rnn_forward(module, x, hidden_masks)


def build_masked_graph(model: nn.Module, structure: Structure) -> fx.GraphModule:
    """A GraphModule computing `model` with masks: forward(*inputs, masks) (shares the model's modules)."""
    graph_module = structure.trace_matching(model)
    graph = graph_module.graph
    nodes = {node.name: node for node in graph.nodes}
    last_input = [node for node in graph.nodes if node.op == "placeholder"][-1]
    with graph.inserting_after(last_input):
        masks = graph.placeholder("masks")
    for name, spec in structure.data.mask_edges.items():
        consumer = nodes[name]
        with graph.inserting_before(consumer):
            masked = graph.call_function(apply_layout_mask, (consumer.args[0], masks, spec))
        consumer.update_arg(0, masked)
    for name, layer_groups in structure.data.rnn_nodes.items():
        rnn = nodes[name]
        with graph.inserting_before(rnn):
            module = graph.get_attr(rnn.target)
            masked_call = graph.call_function(masked_rnn_call, (module, rnn.args[0], masks, layer_groups))
        rnn.replace_all_uses_with(masked_call)
        graph.erase_node(rnn)
    graph.lint()
    graph_module.recompile()
    return graph_module


class MaskedNetwork(nn.Module):
    """`model` with DeepIoT dropout masks on its hidden elements; shares (and trains) the model's parameters.

    `forward(x, masks)`: masks maps group name → float Tensor [N, size] (per sample) or [size] (shared);
    missing groups are unmasked and `masks=None` runs the plain model. Each element is multiplied by its
    mask exactly once on every path, so hard 0/1 masks equal the network with those elements removed and
    fractional masks give x·p (the paper's non-inverted dropout at evaluation).
    """

    def __init__(self, model: nn.Module, structure: Structure) -> None:
        super().__init__()
        self.model = model
        self.structure = structure
        # Not registered as a submodule: its leaf modules ARE the model's (no duplicate parameters).
        self.__dict__["masked_graph"] = build_masked_graph(model, structure)
        self.train(model.training)

    def forward(self, x: Tensor | tuple[Tensor, ...], masks: Masks | None = None) -> Tensor:
        inputs = x if isinstance(x, tuple) else (x,)
        if masks is None:
            return self.model(*inputs)
        self._check_masks(masks, inputs[0].shape[0])
        self.masked_graph.training = self.model.training  # functional dropout follows the model's mode
        return self.masked_graph(*inputs, masks)

    def _check_masks(self, masks: Masks, batch: int) -> None:
        sizes = self.structure.group_sizes
        for name, mask in masks.items():
            if name not in sizes:
                raise StructureError(f"mask for unknown group {name!r}; groups: {list(sizes)}.")
            if tuple(mask.shape) not in ((sizes[name],), (batch, sizes[name])):
                raise StructureError(
                    f"mask of group {name!r} must have shape [{sizes[name]}] or [{batch}, {sizes[name]}] "
                    f"(batch {batch}), got {tuple(mask.shape)}."
                )


def sample_masks(
    keep_probs: Mapping[str, Tensor], batch_size: int, generator: Generator | None = None
) -> dict[str, Tensor]:
    """Per-sample Bernoulli masks: {group: float 0/1 Tensor [batch_size, size]} with P(1) = keep_probs[group]."""
    masks = {}
    for name, probs in keep_probs.items():
        if probs.dim() != 1:
            raise StructureError(f"keep_probs[{name!r}] must be 1-D [size], got shape {tuple(probs.shape)}.")
        probs = probs.detach()
        if bool(((probs < 0) | (probs > 1)).any()):
            raise StructureError(f"keep_probs[{name!r}] must lie in [0, 1].")
        masks[name] = torch.bernoulli(probs.expand(batch_size, -1), generator=generator)  # [N, size]
    return masks
