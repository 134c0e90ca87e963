"""Physical slicing: a new, smaller model of standard layers that computes the hard-masked network.

One small slicing function per layer type (Linear, Conv, BatchNorm, LSTM/GRU/RNN via `slice_rnn`), each
cutting every tensor dimension to the positions its layout keeps — producer outputs by the group's kept
indices, consumer inputs by the expanded layout (channel × flattened positions, cat offsets,
bidirectional halves). The result is a `torch.fx.GraphModule` (plain `nn.Module`: TorchScript tracing and
ONNX export handle it) whose hard-coded view/reshape sizes are rewritten to the new widths.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn

from deepiot.structure.discovery import ModuleUse
from deepiot.structure.errors import StructureError
from deepiot.structure.graph import KeptIndices, Structure
from deepiot.structure.layout import Layout, kept_positions, kept_width
from deepiot.structure.masking import MaskedNetwork
from deepiot.structure.recurrent import StackedRNN, slice_rnn


def _sliced_state(
    module: nn.Module, dims: Mapping[str, list[Layout | None]], kept: Mapping[str, Tensor]
) -> dict:
    """The module's state_dict with dimension d of tensor `name` cut to kept_positions(dims[name][d])."""
    state = {}
    for name, tensor in module.state_dict().items():
        for dim, layout in enumerate(dims.get(name, [])):
            if layout is not None:
                tensor = tensor.index_select(dim, kept_positions(layout, kept).to(tensor.device))
        state[name] = tensor.clone()
    return state


def _slice_linear(module: nn.Linear, use: ModuleUse, kept: Mapping[str, Tensor]) -> nn.Module:
    out_layout = use.outputs[0]
    sliced = nn.Linear(
        kept_width(use.input, _counts(kept)),
        kept_width(out_layout, _counts(kept)),
        bias=module.bias is not None,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    sliced.load_state_dict(
        _sliced_state(module, {"weight": [out_layout, use.input], "bias": [out_layout]}, kept)
    )
    return sliced


def _slice_conv(module: nn.modules.conv._ConvNd, use: ModuleUse, kept: Mapping[str, Tensor]) -> nn.Module:
    out_layout = use.outputs[0]
    sliced = type(module)(
        kept_width(use.input, _counts(kept)),
        kept_width(out_layout, _counts(kept)),
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    sliced.load_state_dict(
        _sliced_state(module, {"weight": [out_layout, use.input], "bias": [out_layout]}, kept)
    )
    return sliced


def _slice_batchnorm(
    module: nn.modules.batchnorm._BatchNorm, use: ModuleUse, kept: Mapping[str, Tensor]
) -> nn.Module:
    reference = next(iter(module.state_dict().values()), torch.empty(0))
    sliced = type(module)(
        kept_width(use.input, _counts(kept)),
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        device=reference.device,
        dtype=module.weight.dtype if module.affine else None,
    )
    per_channel = {name: [use.input] for name in ("weight", "bias", "running_mean", "running_var")}
    sliced.load_state_dict(_sliced_state(module, per_channel, kept))
    return sliced


def _slice_recurrent(module: nn.Module, use: ModuleUse, kept: Mapping[str, Tensor]) -> nn.Module:
    hidden = [kept_positions(layout, kept) for layout in use.outputs]
    return slice_rnn(module, kept_positions(use.input, kept), hidden)


SLICERS: dict[str, Callable[[nn.Module, ModuleUse, Mapping[str, Tensor]], nn.Module]] = {
    "linear": _slice_linear,
    "conv": _slice_conv,
    "batchnorm": _slice_batchnorm,
    "rnn": _slice_recurrent,
}


def _counts(kept: Mapping[str, Tensor]) -> dict[str, int]:
    return {name: len(indices) for name, indices in kept.items()}


def _replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attribute, module)


def _rewrite_reshapes(graph_module: fx.GraphModule, structure: Structure, kept: Mapping[str, Tensor]) -> None:
    """Replace a hard-coded size of the channel-carrying output dim of view/reshape by the kept width."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    for name, (out_dim, layout) in structure.data.reshapes.items():
        node = nodes[name]
        packed = len(node.args) == 2 and isinstance(node.args[1], tuple | list)
        sizes = (
            list(node.args[1] if packed else node.args[1:])
            if len(node.args) > 1
            else list(node.kwargs["shape"])
        )
        if isinstance(sizes[out_dim], int) and sizes[out_dim] != -1:
            sizes[out_dim] = kept_width(layout, _counts(kept))
        if len(node.args) > 1:
            node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
        else:
            node.update_kwarg("shape", tuple(sizes))


def _rewrite_stacked_states(graph_module: fx.GraphModule, structure: Structure) -> None:
    """h_n[i] of an RNN sliced into a StackedRNN (per-layer states) becomes h_n[layer][direction]."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    for name, (rnn_name, position) in structure.data.stacked_indexing.items():
        rnn = nodes[rnn_name]
        if not isinstance(graph_module.get_submodule(rnn.target), StackedRNN):
            continue
        directions = 2 if graph_module.get_submodule(rnn.target).bidirectional else 1
        node = nodes[name]
        with graph_module.graph.inserting_before(node):
            layer_state = graph_module.graph.call_function(
                node.target, (node.args[0], position // directions)
            )
        node.args = (layer_state, position % directions)  # [D, N, H_l][direction] → [N, H_l]


def slice_model(
    model: nn.Module, structure: Structure, kept: KeptIndices, *, verify: bool = True
) -> nn.Module:
    """A new, physically smaller model keeping `kept[g]` (sorted indices or bool mask) of each group g.

    Missing groups keep every element. The model itself is not modified. With `verify`, the sliced model
    is checked on the structure's example inputs against `MaskedNetwork(model, structure)` with the
    equivalent hard masks (eval mode); a mismatch raises instead of returning a wrong model.
    """
    indices = structure.kept_indices(kept)
    graph_module = structure.trace_matching(copy.deepcopy(model))
    for name, use in structure.data.module_uses.items():
        original = graph_module.get_submodule(name)
        sliced = SLICERS[use.kind](original, use, indices)
        sliced.train(original.training)
        _replace_submodule(graph_module, name, sliced)
    _rewrite_reshapes(graph_module, structure, indices)
    _rewrite_stacked_states(graph_module, structure)
    graph_module.graph.lint()
    graph_module.recompile()
    if verify:
        check_equivalent(model, structure, graph_module, indices)
    return graph_module


@torch.no_grad()
def check_equivalent(
    model: nn.Module, structure: Structure, sliced: nn.Module, kept: KeptIndices, tolerance: float = 1e-4
) -> None:
    """Raise StructureError unless `sliced` computes the hard-masked `model` on the example inputs (eval)."""
    masks = structure.masks_from_kept(
        kept, structure.example_inputs[0].device
    )  # where the inputs (and model) are
    modes = [(module, module.training) for module in [*model.modules(), *sliced.modules()]]
    try:
        model.eval()
        sliced.eval()
        expected = MaskedNetwork(model, structure)(structure.example_inputs, masks)
        actual = sliced(*structure.example_inputs)
    finally:
        for module, training in modes:
            module.training = training
    expected, actual = _tensors(expected), _tensors(actual)
    scale = max([1.0] + [float(e.abs().amax()) for e in expected if e.numel()])
    shapes_match = [e.shape for e in expected] == [a.shape for a in actual]
    if not shapes_match or any(
        e.numel() and float((e - a).abs().amax()) > tolerance * scale
        for e, a in zip(expected, actual, strict=True)
    ):
        raise StructureError(
            "the sliced model does not reproduce the hard-masked model on the example inputs; this is a bug in "
            "deepiot's structure layer for this architecture — please report it with the model definition."
        )


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [tensor for item in value for tensor in _tensors(item)]
    return []
