"""Per-layer inventory of a model: every Linear/Conv/LSTM/GRU layer with its widths as forms of kept counts.

The latency model prices a model as the sum of its layers (FastDeepIoT's form), so it needs each layer's
shape for any kept set. `layer_inventory` reads the in/out channel layouts the structure already found
(`structure.data.module_uses`, the same records that slice the model and price its params/MACs) and adds
what the layouts do not hold (spatial positions, kernel, steps) from one recorded forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from deepiot.cost.types import RNN_GATES
from deepiot.structure import Structure
from deepiot.structure.cost import LinearForm
from deepiot.structure.layout import tile

LAYER_KINDS = ("linear", "conv1d", "conv2d", "lstm", "gru")
GATES = {
    "lstm": RNN_GATES["LSTM"],
    "gru": RNN_GATES["GRU"],
}  # gate blocks per hidden unit (the cost contract's)
FEATURE_NAMES = ("macs", "params", "traffic", "unfolded", "steps")
Number = float | Tensor


@dataclass(frozen=True)
class LayerSpec:
    """One compute layer: `kind`, its input/output widths as forms of the kept counts, and fixed geometry.

    positions: output positions per sample (Linear rows, conv output length/area, RNN steps);
    in_positions: input positions (conv) — equal to `positions` otherwise; kernel: ∏ kernel size (1 for
    Linear/RNN); directions: 2 for a bidirectional RNN layer; batchnorm: a BatchNorm follows the conv.
    """

    name: str
    kind: str
    in_width: LinearForm
    out_width: LinearForm
    positions: int
    in_positions: int
    kernel: int = 1
    directions: int = 1
    batchnorm: bool = False
    in_spatial: tuple[int, ...] = ()


def layer_features(spec: LayerSpec, in_width: Number, out_width: Number) -> dict[str, Number]:
    """MACs, parameters, memory traffic (input + output elements), unfolded input elements (a conv's im2col
    buffer: positions · kernel · in) and sequential steps of one layer call."""
    if spec.kind in GATES:
        gates = spec.directions * GATES[spec.kind]
        params = gates * out_width * (in_width + out_width + 2)
        traffic = spec.positions * (in_width + spec.directions * out_width)
        macs = spec.positions * gates * out_width * (in_width + out_width)
        return {"macs": macs, "params": params, "traffic": traffic, "unfolded": 0, "steps": spec.positions}
    weights = spec.kernel * in_width * out_width
    traffic = spec.in_positions * in_width + spec.positions * out_width
    unfolded = spec.positions * spec.kernel * in_width
    return {
        "macs": spec.positions * weights,
        "params": weights + out_width,
        "traffic": traffic,
        "unfolded": unfolded,
        "steps": 0,
    }


def features_at(spec: LayerSpec, counts: Mapping[str, Number]) -> dict[str, Number]:
    """`layer_features` with the widths this layer has when group g keeps `counts[g]` elements."""
    return layer_features(spec, spec.in_width.value(counts), spec.out_width.value(counts))


def layer_inventory(model: nn.Module, structure: Structure) -> tuple[LayerSpec, ...]:
    """Every Linear / Conv1d / Conv2d / LSTM / GRU layer of `model` (RNN modules: one spec per layer)."""
    shapes = _record_shapes(model, structure.example_inputs)
    uses = structure.data.module_uses
    normalised = {_layout_key(use.input) for use in uses.values() if use.kind == "batchnorm"}
    specs: list[LayerSpec] = []
    for name, use in uses.items():
        module = model.get_submodule(name)
        if use.kind == "batchnorm":
            continue
        in_shape, out_shape = shapes[name]
        if use.kind == "rnn":
            specs.extend(_rnn_specs(name, module, use, in_shape))
            continue
        in_form, out_form = LinearForm.from_layout(use.input), LinearForm.from_layout(use.outputs[0])
        if use.kind == "linear":
            positions = prod(in_shape[1:]) // module.in_features
            specs.append(LayerSpec(name, "linear", in_form, out_form, positions, positions))
            continue
        kind = f"conv{len(module.kernel_size)}d"
        batchnorm = _layout_key(use.outputs[0]) in normalised
        specs.append(
            LayerSpec(
                name,
                kind,
                in_form,
                out_form,
                prod(out_shape[2:]),
                prod(in_shape[2:]),
                prod(module.kernel_size),
                1,
                batchnorm,
                tuple(in_shape[2:]),
            )
        )
    return tuple(specs)


def _rnn_specs(name: str, module: nn.Module, use: Any, in_shape: tuple[int, ...]) -> list[LayerSpec]:
    kind = module.mode.lower()
    if kind not in GATES:
        raise ValueError(f"latency model: {name} is an {module.mode} layer; profiles cover {LAYER_KINDS}.")
    directions = 2 if module.bidirectional else 1
    steps = in_shape[1 if module.batch_first else 0]
    specs = []
    for layer, layout in enumerate(use.outputs):
        layer_input = use.input if layer == 0 else tile(use.outputs[layer - 1], directions)
        in_form, out_form = LinearForm.from_layout(layer_input), LinearForm.from_layout(layout)
        specs.append(LayerSpec(f"{name}.l{layer}", kind, in_form, out_form, steps, steps, 1, directions))
    return specs


def _layout_key(layout: Any) -> tuple:
    return tuple((segment.group, segment.count) for segment in layout if segment.group is not None)


def _record_shapes(model: nn.Module, inputs: tuple[Tensor, ...]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(input shape, output shape) of every leaf module call, from one batch-1 forward pass in eval mode."""
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)):

            def hook(_module: nn.Module, args: tuple, output: Any, name: str = name) -> None:
                output = output[0] if isinstance(output, tuple) else output
                shapes[name] = (tuple(args[0].shape), tuple(output.shape))

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*(value[:1] for value in inputs))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return shapes
