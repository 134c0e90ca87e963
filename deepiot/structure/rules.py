"""Op rules: how each op or leaf module moves the group-indexed ("channel") dimension of its inputs.

`node_info(discovery, node)` is the single entry point. Rules are looked up in two tables, one by leaf
module type and one by canonical op name (functions and Tensor methods share names: `torch.flatten(x, 1)`
and `x.flatten(1)` both become "flatten"). A rule returns the output's `Info`, records masks/slicing/cost
facts on the `Discovery`, or calls `discovery.fail` when the op would mix or cut a group's channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from math import prod
from typing import Any

import torch.fx as fx
from torch import nn

from deepiot.cost.types import ZERO_MAC_MODULES  # leaf modules with parameters whose MACs are zero
from deepiot.structure.discovery import Discovery, ModuleUse, fixed, with_clean
from deepiot.structure.infos import Info, StackedInfo, TensorInfo, TensorMeta, TupleInfo, tensor_info
from deepiot.structure.layout import Layout, Segment, layout_width, spread, tile, unspread, untile
from deepiot.structure.recurrent import GATES, RECURRENT_TYPES

ModuleRule = Callable[[Discovery, fx.Node, nn.Module], Info]
OpRule = Callable[[Discovery, fx.Node, str], Info]

# ---------------------------------------------------------------------------------------------- helpers


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional argument `index` or keyword `name` of a call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _first_info(ctx: Discovery, node: fx.Node) -> TensorInfo | None:
    """The info of the first argument; fails if any other argument carries groups or it is not a tensor."""
    source = node.args[0] if node.args else next(iter(node.kwargs.values()))
    for value in node.all_input_nodes:
        if value is not source and ctx.info(value) is not None:
            ctx.fail(node, f"argument '{value.name}' other than the first carries hidden-element channels")
    info = ctx.info(source)
    if info is not None and not isinstance(info, TensorInfo):
        ctx.fail(node, "it receives a tuple or stacked RNN state where a tensor was expected")
    return info


def _channels_first(ctx: Discovery, node: fx.Node, info: TensorInfo | None, what: str) -> None:
    """Fail unless the channel dim is dim 1 (as conv/BN/pooling expect for [N, C, ...] tensors)."""
    if info is not None and info.channel_dim != 1:
        ctx.fail(node, f"{what} works on dim 1 but the groups index dim {info.channel_dim}")


# ---------------------------------------------------------------------------------------------- modules


def _linear(ctx: Discovery, node: fx.Node, module: nn.Linear) -> Info:
    info = _first_info(ctx, node)
    in_shape = ctx.shape(node.args[0])
    if info is not None and info.channel_dim != len(in_shape) - 1:
        ctx.fail(node, f"Linear mixes the last dim but the groups index dim {info.channel_dim}")
    in_layout = info.layout if info else fixed(module.in_features)
    group = ctx.producer(node.target, "linear", module.out_features, node.target)
    out_layout = (Segment(group, module.out_features),)
    ctx.use_module(node, ModuleUse("linear", in_layout, (out_layout,)))
    ctx.mask_edge(node, info)
    small, large = ctx.meta(node.args[0]), ctx.meta(node.args[0], grown=True)
    positions = ctx.per_sample_numel(small, large) // module.in_features
    ctx.macs(positions, (in_layout, out_layout))
    return tensor_info(len(ctx.shape(node)) - 1, out_layout)


def _conv(ctx: Discovery, node: fx.Node, module: nn.modules.conv._ConvNd) -> Info:
    info = _first_info(ctx, node)
    small, large = ctx.meta(node), ctx.meta(node, grown=True)
    out_spatial = ctx.per_sample_numel(small, large) // module.out_channels
    kernel = prod(module.kernel_size)
    if module.groups != 1 or module.transposed:
        if info is not None:
            ctx.fail(node, "grouped, depthwise and transposed convolutions are not supported as consumers")
        fan_in = module.in_channels // module.groups
        ctx.macs(out_spatial * kernel * fan_in * module.out_channels, ())
        return None
    _channels_first(ctx, node, info, "convolution")
    in_layout = info.layout if info else fixed(module.in_channels)
    group = ctx.producer(node.target, "conv", module.out_channels, node.target)
    out_layout = (Segment(group, module.out_channels),)
    ctx.use_module(node, ModuleUse("conv", in_layout, (out_layout,)))
    ctx.mask_edge(node, info)
    ctx.macs(out_spatial * kernel, (in_layout, out_layout))
    return tensor_info(1, out_layout)


def _recurrent(ctx: Discovery, node: fx.Node, module: nn.LSTM | nn.GRU | nn.RNN) -> Info:
    if getattr(module, "proj_size", 0) > 0:
        ctx.fail(node, f"nn.LSTM with proj_size={module.proj_size} is not supported")
    info = _first_info(ctx, node)
    in_shape = ctx.shape(node.args[0])
    if len(in_shape) != 3:
        ctx.fail(node, f"the recurrent layer gets an unbatched input of shape {in_shape}; pass [N, T, F]")
    if info is not None and info.channel_dim != 2:
        ctx.fail(
            node, f"the recurrent layer reads features from dim 2 but the groups index dim {info.channel_dim}"
        )
    directions, hidden, layers = 2 if module.bidirectional else 1, module.hidden_size, module.num_layers
    groups = [ctx.producer(f"{node.target}.l{k}", "rnn", hidden, node.target, k) for k in range(layers)]
    if len(node.all_input_nodes) > 1 and any(groups):
        ctx.fail(node, "an initial state hx is passed; its width would change with slicing")
    in_layout = info.layout if info else fixed(module.input_size)
    layer_layouts = [(Segment(group, hidden),) for group in groups]
    ctx.use_module(node, ModuleUse("rnn", in_layout, tuple(layer_layouts)))
    ctx.mask_edge(node, info)
    if any(groups):
        ctx.rnn_nodes[node.name] = tuple(groups)
    steps = in_shape[1 if module.batch_first else 0]
    per_layer = steps * directions * GATES[module.mode]
    for k, layout in enumerate(layer_layouts):
        layer_input = in_layout if k == 0 else tile(layer_layouts[k - 1], directions)
        ctx.macs(per_layer, (layout, layer_input))
        ctx.macs(per_layer, (layout, layout))
    return _recurrent_outputs(node, module, layer_layouts, directions)


def _recurrent_outputs(node: fx.Node, module: nn.Module, layouts: list[Layout], directions: int) -> Info:
    """(output [N, T, D·H_top], h_n) for GRU/RNN, (output, (h_n, c_n)) for LSTM."""
    output = tensor_info(2, tile(layouts[-1], directions), clean=True)
    per_state = [layouts[index // directions] for index in range(len(layouts) * directions)]

    def stacked(cell: bool) -> StackedInfo | None:
        items = tuple(tensor_info(1, layout, clean=not cell, cell=cell) for layout in per_state)
        return StackedInfo(items, node.name, directions) if any(items) else None

    state = TupleInfo((stacked(False), stacked(True))) if isinstance(module, nn.LSTM) else stacked(False)
    if output is None and state is None:
        return None
    return TupleInfo((output, state))


def _batchnorm(ctx: Discovery, node: fx.Node, module: nn.Module) -> Info:
    info = _first_info(ctx, node)
    if info is None:
        return None
    _channels_first(ctx, node, info, "batch normalisation")
    ctx.use_module(node, ModuleUse("batchnorm", info.layout))
    return with_clean(info, False)


def _elementwise_module(zero_preserving: bool) -> ModuleRule:
    def rule(ctx: Discovery, node: fx.Node, module: nn.Module) -> Info:
        info = _first_info(ctx, node)
        return None if info is None else with_clean(info, info.clean and zero_preserving)

    return rule


def _pool_module(ctx: Discovery, node: fx.Node, module: nn.Module) -> Info:
    info = _first_info(ctx, node)
    _channels_first(ctx, node, info, "pooling")
    return info


def _flatten_module(ctx: Discovery, node: fx.Node, module: nn.Flatten) -> Info:
    info = _first_info(ctx, node)
    return None if info is None else _flattened(ctx, node, info, module.start_dim, module.end_dim)


def _layer_norm_module(ctx: Discovery, node: fx.Node, module: nn.LayerNorm) -> Info:
    info = _first_info(ctx, node)
    return None if info is None else _normalised_over_last(ctx, node, info, len(module.normalized_shape))


def _softmax_module(ctx: Discovery, node: fx.Node, module: nn.Module) -> Info:
    info = _first_info(ctx, node)
    return None if info is None else _softmax_like(ctx, node, info, module.dim)


ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh,
    nn.Hardswish, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
OTHER_ELEMENTWISE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip

MODULE_RULES: tuple[tuple[type | tuple[type, ...], ModuleRule], ...] = (
    (nn.Linear, _linear),
    (nn.modules.conv._ConvNd, _conv),
    (RECURRENT_TYPES, _recurrent),
    (nn.modules.batchnorm._BatchNorm, _batchnorm),
    (ZERO_PRESERVING_MODULES, _elementwise_module(zero_preserving=True)),
    (OTHER_ELEMENTWISE_MODULES, _elementwise_module(zero_preserving=False)),
    (POOL_MODULES, _pool_module),
    (nn.Flatten, _flatten_module),
    (nn.LayerNorm, _layer_norm_module),
    ((nn.Softmax, nn.LogSoftmax), _softmax_module),
)


def _module_info(ctx: Discovery, node: fx.Node) -> Info:
    module = ctx.module(node)
    for module_type, rule in MODULE_RULES:
        if isinstance(module, module_type):
            return rule(ctx, node, module)
    has_parameters = any(True for _ in module.parameters(recurse=False))
    if has_parameters and not isinstance(module, ZERO_MAC_MODULES):
        ctx.unknown_macs.append(ctx.describe(node))
    if ctx.groups_in_args(node):
        ctx.fail(node, "this module type is not known to preserve channels")
    return None


# ---------------------------------------------------------------------------------------------- ops


def _elementwise(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    return with_clean(info, info.clean and name in ZERO_PRESERVING_OPS)


def _binary(ctx: Discovery, node: fx.Node, name: str) -> Info:
    """add/sub/mul/div/maximum/minimum with broadcasting: operands' channels are identified (merged)."""
    out_shape = ctx.shape(node)
    operands = [node.args[0], _arg(node, 1, "other")]
    grouped: list[tuple[int, TensorInfo]] = []
    plain: list[tuple[fx.Node, tuple[int, ...]]] = []
    for operand in operands:
        info = ctx.info(operand)
        if isinstance(operand, fx.Node) and isinstance(ctx.meta(operand), TensorMeta):
            offset = len(out_shape) - len(ctx.shape(operand))
            if info is None:
                plain.append((operand, ctx.shape(operand)))
            elif isinstance(info, TensorInfo):
                grouped.append((info.channel_dim + offset, info))
            else:
                ctx.fail(node, "an operand is a tuple or stacked RNN state")
    channel_dims = {dim for dim, _ in grouped}
    if len(channel_dims) != 1:
        ctx.fail(node, "its operands carry hidden-element channels on different dimensions")
    channel_dim = channel_dims.pop()
    layout = grouped[0][1].layout
    for _, info in grouped[1:]:
        layout = ctx.merge_layouts(node, layout, info.layout)
    if out_shape[channel_dim] != layout_width(layout):
        ctx.fail(node, "a group's channels are broadcast against a larger dimension")
    for operand, shape in plain:
        dim = channel_dim - (len(out_shape) - len(shape))
        if dim >= 0 and shape[dim] != 1:
            ctx.pin_layout(
                layout, f"'{node.name}' combines its channels with '{operand.name}', which has no group"
            )
    return TensorInfo(channel_dim, layout, _binary_keeps_zeros(ctx, name, operands, grouped))


def _binary_keeps_zeros(ctx: Discovery, name: str, operands: list[Any], grouped: list) -> bool:
    """Whether an RNN unit that is exactly 0 in the operands stays 0 (0·x, 0/x, 0+0)."""
    first = ctx.info(operands[0])
    if name == "mul":
        return any(info.clean for _, info in grouped)
    if name == "div":
        return isinstance(first, TensorInfo) and first.clean
    return len(grouped) == 2 and all(info.clean for _, info in grouped)


def _cat(ctx: Discovery, node: fx.Node, name: str) -> Info:
    tensors = list(node.args[0])
    ndim = len(ctx.shape(node))
    dim = _arg(node, 1, "dim", 0)
    stacking = name == "stack"
    dim = _dim(dim, ndim)
    infos = [ctx.info(tensor) for tensor in tensors]
    if any(info is not None and not isinstance(info, TensorInfo) for info in infos):
        ctx.fail(node, "it joins tuples or stacked RNN states")
    channel_dims = {info.channel_dim for info in infos if info is not None}
    if len(channel_dims) != 1:
        ctx.fail(node, "its inputs carry hidden-element channels on different dimensions")
    channel_dim = channel_dims.pop()
    clean = all(info.clean for info in infos if info is not None)
    layouts = [
        info.layout if info is not None else fixed(ctx.shape(tensor)[channel_dim])
        for tensor, info in zip(tensors, infos, strict=True)
    ]
    if dim == channel_dim and not stacking:
        return TensorInfo(channel_dim, tuple(segment for layout in layouts for segment in layout), clean)
    layout = layouts[0]
    for other in layouts[1:]:
        layout = ctx.merge_layouts(node, layout, other)
    out_channel_dim = channel_dim + 1 if stacking and dim <= channel_dim else channel_dim
    return TensorInfo(out_channel_dim, layout, clean)


def _getitem(ctx: Discovery, node: fx.Node, name: str) -> Info:
    source, index = node.args
    info = ctx.info(source)
    if isinstance(info, TupleInfo):
        return info.items[index] if isinstance(index, int) else TupleInfo(tuple(info.items[index]))
    if isinstance(info, StackedInfo):
        if not isinstance(index, int):
            ctx.fail(node, "an RNN final state is indexed by something other than one integer layer index")
        position = _dim(index, len(info.items))
        ctx.stacked_indexing[node.name] = (info.source, position)
        return info.items[position]
    return _index_tensor(ctx, node, info, index)


def _index_tensor(ctx: Discovery, node: fx.Node, info: TensorInfo, index: Any) -> Info:
    """Basic indexing (ints, slices, None, Ellipsis) that leaves the channel dimension whole."""
    items = index if isinstance(index, tuple) else (index,)
    shape = ctx.shape(node.args[0])
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    source_dim, out_dim, channel_dim = 0, 0, None
    for item in items:
        if item is Ellipsis:
            skipped = len(shape) - consumed
            if source_dim <= info.channel_dim < source_dim + skipped:
                channel_dim = out_dim + info.channel_dim - source_dim
            source_dim, out_dim = source_dim + skipped, out_dim + skipped
        elif item is None:
            out_dim += 1
        elif isinstance(item, int | slice):
            if source_dim == info.channel_dim:
                if not _whole(item, shape[source_dim]):
                    ctx.fail(node, f"it indexes into the channel dimension with {item!r}")
                channel_dim = out_dim
            source_dim, out_dim = source_dim + 1, out_dim + (1 if isinstance(item, slice) else 0)
        else:
            ctx.fail(node, "advanced (tensor) indexing of a tensor with hidden-element channels")
    if channel_dim is None:
        channel_dim = out_dim + info.channel_dim - source_dim
    return replace(info, channel_dim=channel_dim)


def _whole(item: Any, size: int) -> bool:
    """True for a slice that keeps every position of a dimension of this (or any smaller) size."""
    if not isinstance(item, slice) or item.step not in (None, 1) or item.start not in (None, 0):
        return False
    return item.stop is None or (isinstance(item.stop, int) and item.stop >= size)


def _transpose(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    ndim = len(ctx.shape(node))
    first, second = _dim(_arg(node, 1, "dim0"), ndim), _dim(_arg(node, 2, "dim1"), ndim)
    swap = {first: second, second: first}
    return replace(info, channel_dim=swap.get(info.channel_dim, info.channel_dim))


def _permute(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], tuple | list) else node.args[1:]
    dims = dims or node.kwargs.get("dims")
    order = [_dim(d, len(dims)) for d in dims]
    return replace(info, channel_dim=order.index(info.channel_dim))


def _flatten(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    return _flattened(ctx, node, info, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def _flattened(ctx: Discovery, node: fx.Node, info: TensorInfo, start: int, end: int) -> Info:
    shape = ctx.shape(node.args[0])
    start, end = _dim(start, len(shape)), _dim(end, len(shape))
    channel = info.channel_dim
    if channel < start:
        return info
    if channel > end:
        return replace(info, channel_dim=channel - (end - start))
    batch = ctx.batch_dim(node.args[0])
    if batch is not None and start <= batch <= end:
        ctx.fail(node, "it flattens the channel dimension together with the batch dimension")
    layout = tile(spread(info.layout, prod(shape[channel + 1 : end + 1])), prod(shape[start:channel]))
    return TensorInfo(start, layout, info.clean)


def _reshape(ctx: Discovery, node: fx.Node, name: str) -> Info:
    """view/reshape: follow the channel dim when it is merged with neighbours or split back out."""
    info = _first_info(ctx, node)
    source = node.args[0]
    shapes = [(ctx.shape(source), ctx.shape(node)), (ctx.shape(source, True), ctx.shape(node, True))]
    merged = _merge_match(shapes, info.channel_dim)
    batch = ctx.batch_dim(source)
    if merged is not None:
        first, end, out_dim = merged
        if batch is not None and first <= batch < end:
            ctx.fail(node, "it merges the channel dimension with the batch dimension")
        in_shape = shapes[0][0]
        inner, outer = prod(in_shape[info.channel_dim + 1 : end]), prod(in_shape[first : info.channel_dim])
        layout: Layout | None = tile(spread(info.layout, inner), outer)
    else:
        out_dim, layout = _split_match(shapes, info)
    if layout is None:
        ctx.fail(node, f"it reshapes {shapes[0][0]} → {shapes[0][1]} in a way that splits channels apart")
    ctx.reshapes[node.name] = out_dim
    return TensorInfo(out_dim, layout, info.clean)


def _merge_match(
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], channel: int
) -> tuple[int, int, int] | None:
    """(first, end, out_dim): input dims [first, end) ∋ channel become output dim out_dim, in every run."""
    in_shape, out_shape = shapes[0]
    for first in range(channel, -1, -1):
        for end in range(channel + 1, len(in_shape) + 1):
            for out_dim in range(len(out_shape)):
                if all(
                    prod(i[:first]) == prod(o[:out_dim]) and prod(i[first:end]) == o[out_dim]
                    for i, o in shapes
                ):
                    return first, end, out_dim
    return None


def _split_match(
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], info: TensorInfo
) -> tuple[int, Layout | None]:
    """The channel dim split into output dims [start, stop): the one dim j that carries whole channels."""
    in_shape, out_shape = shapes[0]
    channel = info.channel_dim
    for start in range(len(out_shape)):
        if not all(prod(o[:start]) == prod(i[:channel]) for i, o in shapes):
            continue
        for stop in range(start + 1, len(out_shape) + 1):
            if prod(out_shape[start:stop]) != in_shape[channel]:
                continue
            for out_dim in range(start, stop):
                untiled = untile(info.layout, prod(out_shape[start:out_dim]))
                layout = unspread(untiled, prod(out_shape[out_dim + 1 : stop])) if untiled else None
                if layout is not None and layout_width(layout) == out_shape[out_dim]:
                    return out_dim, layout
    return -1, None


def _unsqueeze(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    dim = _dim(_arg(node, 1, "dim"), len(ctx.shape(node)))
    return replace(info, channel_dim=info.channel_dim + (1 if dim <= info.channel_dim else 0))


def _squeeze(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    dims = _arg(node, 1, "dim")
    if dims is None:
        ctx.fail(node, "squeeze() without a dim could remove the channel dimension once one unit is left")
    shape = ctx.shape(node.args[0])
    dims = [_dim(d, len(shape)) for d in (dims if isinstance(dims, tuple | list) else [dims])]
    if info.channel_dim in dims:
        ctx.fail(node, "it squeezes the channel dimension")
    removed = sum(1 for d in dims if d < info.channel_dim and shape[d] == 1)
    return replace(info, channel_dim=info.channel_dim - removed)


def _reduce(ctx: Discovery, node: fx.Node, name: str) -> Info:
    """mean/sum/amax/amin/max/min/std/var over non-channel dims."""
    if name in ("max", "min") and isinstance(ctx.meta(_arg(node, 1, "other")), TensorMeta):
        return _binary(ctx, node, name)
    info = _first_info(ctx, node)
    shape = ctx.shape(node.args[0])
    dims = _arg(node, 1, "dim")
    if dims is None:
        ctx.fail(node, "it reduces over every dimension, including the channel dimension")
    dims = [_dim(d, len(shape)) for d in (dims if isinstance(dims, tuple | list) else [dims])]
    if info.channel_dim in dims:
        ctx.fail(node, "it reduces over the channel dimension")
    keepdim = _arg(node, 2, "keepdim", False)
    channel_dim = info.channel_dim - (0 if keepdim else sum(1 for d in dims if d < info.channel_dim))
    zero_preserving = name in ("mean", "sum", "amax", "amin", "max", "min")
    reduced = TensorInfo(channel_dim, info.layout, info.clean and zero_preserving)
    if name in ("max", "min"):  # (values, indices)
        return TupleInfo((reduced, with_clean(reduced, False)))
    return reduced


def _softmax(ctx: Discovery, node: fx.Node, name: str) -> Info:
    return _softmax_like(ctx, node, _first_info(ctx, node), _arg(node, 1, "dim"))


def _softmax_like(ctx: Discovery, node: fx.Node, info: TensorInfo, dim: int | None) -> Info:
    if dim is None or _dim(dim, len(ctx.shape(node))) == info.channel_dim:
        ctx.fail(node, "it normalises over the channel dimension")
    return with_clean(info, False)


def _layer_norm(ctx: Discovery, node: fx.Node, name: str) -> Info:
    normalized = _arg(node, 1, "normalized_shape")
    count = len(normalized) if isinstance(normalized, tuple | list) else 1
    return _normalised_over_last(ctx, node, _first_info(ctx, node), count)


def _normalised_over_last(ctx: Discovery, node: fx.Node, info: TensorInfo, count: int) -> Info:
    if info.channel_dim >= len(ctx.shape(node)) - count:
        ctx.fail(node, "layer normalisation over the channel dimension mixes every channel")
    return with_clean(info, False)


def _pool(ctx: Discovery, node: fx.Node, name: str) -> Info:
    info = _first_info(ctx, node)
    _channels_first(ctx, node, info, "pooling")
    if isinstance(ctx.meta(node), tuple):  # return_indices=True
        return TupleInfo((info, with_clean(info, False)))
    return info


def _split(ctx: Discovery, node: fx.Node, name: str) -> Info:
    """chunk/split/unbind along a non-channel dim: every piece keeps the channels."""
    info = _first_info(ctx, node)
    shape = ctx.shape(node.args[0])
    default = 0
    dim = _dim(
        _arg(node, 2, "dim", default) if name != "unbind" else _arg(node, 1, "dim", default), len(shape)
    )
    if dim == info.channel_dim:
        ctx.fail(node, f"{name} cuts the channel dimension into pieces")
    pieces = len(ctx.meta(node))
    piece = replace(
        info, channel_dim=info.channel_dim - (1 if name == "unbind" and dim < info.channel_dim else 0)
    )
    return TupleInfo((piece,) * pieces)


def _non_tensor(ctx: Discovery, node: fx.Node, name: str) -> Info:
    """size()/dim()/shape/dtype: plain Python values computed at run time (stay correct after slicing)."""
    if isinstance(ctx.meta(node), TensorMeta):
        ctx.fail(node, f"attribute access '{node.args[1] if len(node.args) > 1 else name}' yields a tensor")
    return None


ZERO_PRESERVING_OPS = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardtanh", "hardswish",
    "tanh", "softsign", "tanhshrink", "hardshrink", "softshrink", "abs", "neg", "square",
    "dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d",
    "contiguous", "clone", "detach", "float", "double", "half", "to", "type",
}  # fmt: skip
OTHER_ELEMENTWISE_OPS = {
    "sigmoid", "hardsigmoid", "softplus", "logsigmoid", "exp", "log", "sqrt", "rsqrt", "clamp", "clip",
    "pow", "reciprocal", "erf",
}  # fmt: skip
OP_RULES: dict[str, OpRule] = {
    **{name: _elementwise for name in ZERO_PRESERVING_OPS | OTHER_ELEMENTWISE_OPS},
    **{name: _binary for name in ("add", "sub", "mul", "div", "maximum", "minimum")},
    **{name: _reduce for name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var")},
    **{name: _pool for name in (
        "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "max_pool1d_with_indices", "max_pool2d_with_indices", "adaptive_max_pool1d_with_indices",
        "adaptive_max_pool2d_with_indices",
    )},
    **{name: _split for name in ("chunk", "split", "unbind")},
    **{name: _non_tensor for name in ("size", "dim", "numel", "getattr")},
    "cat": _cat,
    "stack": _cat,
    "getitem": _getitem,
    "transpose": _transpose,
    "swapaxes": _transpose,
    "permute": _permute,
    "flatten": _flatten,
    "view": _reshape,
    "reshape": _reshape,
    "unsqueeze": _unsqueeze,
    "squeeze": _squeeze,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "layer_norm": _layer_norm,
}  # fmt: skip
ALIASES = {
    "iadd": "add", "isub": "sub", "imul": "mul", "truediv": "div", "itruediv": "div", "multiply": "mul",
    "subtract": "sub", "divide": "div", "concat": "cat", "concatenate": "cat", "swapdims": "swapaxes",
}  # fmt: skip
TORCH_NAMESPACES = {
    "torch", "torch.nn.functional", "torch._C._nn", "_operator", "operator", "builtins", "torch.functional",
    "torch._C._VariableFunctions", "torch._tensor",
}  # fmt: skip


def op_name(node: fx.Node) -> str:
    """Canonical name of a function/method call (in-place and operator spellings folded)."""
    if node.op == "call_method":
        name = node.target
    else:
        module = getattr(node.target, "__module__", None)
        name = getattr(node.target, "__name__", str(node.target))
        if module not in TORCH_NAMESPACES:
            return f"{module}.{name}"
    name = ALIASES.get(name, name)
    if name.endswith("_") and not name.startswith("_") and name[:-1] in OP_RULES:
        name = name[:-1]
    return name


def node_info(ctx: Discovery, node: fx.Node) -> Info:
    """The `Info` of `node`'s output (the one entry point of this module)."""
    if node.op == "call_module":
        return _module_info(ctx, node)
    if not ctx.groups_in_args(node):
        return None
    name = op_name(node)
    rule = OP_RULES.get(name)
    if rule is None:
        ctx.fail(node, f"op '{name}' is not known to preserve channels")
    return rule(ctx, node, name)
