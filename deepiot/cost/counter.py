"""An independent cost counter: run one real forward pass at batch 1 and read every leaf module's shapes.

It knows nothing about `deepiot.structure`; reports and tests use it to check the structure layer's
modelled cost and to describe exported models. Only module calls are counted: compute done by functional
ops inside a custom `forward` (e.g. `torch.matmul`) is invisible to it, as it is to the contract.
Every layer of an LSTM/GRU/RNN module is one call of its own for activation bytes (see `rnn_layer_bytes`),
so a multi-layer module and the same layers as separate single-layer modules count alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from math import prod
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from deepiot.cost.types import RNN_GATES, ZERO_MAC_MODULES, Cost

ExampleInputs = Tensor | tuple[Any, ...]

# Gate blocks per hidden unit and step of the cell types (modules: `RNN_GATES` by mode).
_GATES_BY_CELL: tuple[tuple[type[nn.RNNCellBase], int], ...] = (
    (nn.LSTMCell, RNN_GATES["LSTM"]),
    (nn.GRUCell, RNN_GATES["GRU"]),
    (nn.RNNCell, RNN_GATES["RNN_TANH"]),
)


def as_batch_of_one(example_inputs: ExampleInputs, batch_dim: int | None = 0) -> tuple[Any, ...]:
    """Return the example inputs as a positional-argument tuple, every tensor cut to one sample.

    `batch_dim=None` leaves the inputs as they are (for inputs that are already a single sample).
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if batch_dim is None:
        return inputs
    return tuple(
        value.narrow(batch_dim, 0, 1) if isinstance(value, Tensor) and value.dim() > batch_dim else value
        for value in inputs
    )


def iter_tensors(value: Any) -> Iterator[Tensor]:
    """Yield every tensor inside a nested structure of tuples, lists, dicts and PackedSequences."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, PackedSequence):
        yield value.data
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)


def tensor_bytes(value: Any) -> int:
    """Total bytes of the tensors inside `value`."""
    return sum(tensor.numel() * tensor.element_size() for tensor in iter_tensors(value))


def linear_macs(module: nn.Linear, inputs: tuple[Any, ...], output: Tensor) -> int:
    """in_features · out_features per position: one MAC per input feature for every output element."""
    return module.in_features * output.numel()


def conv_macs(module: nn.modules.conv._ConvNd, inputs: tuple[Any, ...], output: Tensor) -> int:
    """out_channels · (in_channels / groups) · ∏kernel · ∏out_spatial, from the real output shape."""
    if module.transposed:  # each input element is scattered over out/groups channels × kernel
        return (module.out_channels // module.groups) * prod(module.kernel_size) * inputs[0].numel()
    return (module.in_channels // module.groups) * prod(module.kernel_size) * output.numel()


def _sequence_steps(module: nn.RNNBase, sequence: Tensor | PackedSequence) -> int:
    """Time steps of one sequence at batch 1 (packed: the total number of valid steps)."""
    if isinstance(sequence, PackedSequence):
        return sequence.data.shape[0]
    if sequence.dim() == 2:  # unbatched [T, F]
        return sequence.shape[0]
    return sequence.shape[1] if module.batch_first else sequence.shape[0]


def rnn_macs(module: nn.RNNBase, inputs: tuple[Any, ...], output: Any) -> int:
    """gates · H · (layer_in + H_rec) (+ H · proj) per step per direction per layer, × steps."""
    gates = RNN_GATES[module.mode]
    directions = 2 if module.bidirectional else 1
    recurrent_size = module.proj_size or module.hidden_size
    per_step = 0
    layer_input = module.input_size
    for _ in range(module.num_layers):
        cell = gates * module.hidden_size * (layer_input + recurrent_size)
        projection = module.hidden_size * module.proj_size
        per_step += directions * (cell + projection)
        layer_input = recurrent_size * directions
    return per_step * _sequence_steps(module, inputs[0])


def rnn_cell_macs(module: nn.RNNCellBase, inputs: tuple[Any, ...], output: Any) -> int:
    """gates · H · (in + H) for one step of one cell (batch 1)."""
    gates = next(count for cell_type, count in _GATES_BY_CELL if isinstance(module, cell_type))
    return gates * module.hidden_size * (module.input_size + module.hidden_size)


def rnn_layer_bytes(module: nn.RNNBase, inputs: tuple[Any, ...], kwargs: dict, output: Any) -> list[int]:
    """Activation bytes of each layer of one RNN call, as if every layer were a call of its own.

    Layer l: its input sequence (the module input for l = 0, else layer l-1's output sequence) + its output
    sequence + its final states h_n[l] (and c_n[l] for LSTM), all directions, + its share of an initial
    state hx if one is passed. Every layer of one module has the same shapes past layer 0, so its sequences
    have the bytes of the module's output and the states split evenly over the layers.
    """
    layers = module.num_layers
    output_sequence, final_states = output
    sequence_bytes = tensor_bytes(output_sequence)
    state_bytes = tensor_bytes(final_states) // layers
    initial_state_bytes = (tensor_bytes(inputs[1:]) + tensor_bytes(kwargs)) // layers
    layer_inputs = [tensor_bytes(inputs[0])] + [sequence_bytes] * (layers - 1)
    return [layer_input + sequence_bytes + state_bytes + initial_state_bytes for layer_input in layer_inputs]


def call_activation_bytes(module: nn.Module, inputs: tuple[Any, ...], kwargs: dict, output: Any) -> int:
    """Input + output bytes of one leaf-module call; an RNN module's largest layer (`rnn_layer_bytes`)."""
    if isinstance(module, nn.RNNBase):
        return max(rnn_layer_bytes(module, inputs, kwargs, output))
    return tensor_bytes(inputs) + tensor_bytes(kwargs) + tensor_bytes(output)


# One small MAC function per layer type (checked in order; subclasses match their base).
MAC_RULES: tuple[tuple[type[nn.Module], Callable[..., int]], ...] = (
    (nn.Linear, linear_macs),
    (nn.modules.conv._ConvNd, conv_macs),
    (nn.RNNBase, rnn_macs),
    (nn.RNNCellBase, rnn_cell_macs),
)


def module_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one call of a leaf module; zero for parameter-free modules and normalisation layers.

    Raises:
        ValueError: a leaf module owns parameters but its MACs are unknown (silently counting 0 would lie).
    """
    for module_type, rule in MAC_RULES:
        if isinstance(module, module_type):
            return rule(module, inputs, output)
    has_parameters = any(True for _ in module.parameters(recurse=False))
    if has_parameters and not isinstance(module, ZERO_MAC_MODULES):
        raise ValueError(
            f"measure_cost does not know the MACs of module type {type(module).__name__}, which owns "
            "parameters; supported: Linear, Conv1d/2d/3d (incl. transposed), LSTM/GRU/RNN and their cells, "
            "plus zero-MAC norm/embedding layers. Wrap its compute in supported layers or extend MAC_RULES."
        )
    return 0


def _is_counted(module: nn.Module) -> bool:
    """Leaf modules, plus RNN modules even if a subclass added children."""
    return not any(True for _ in module.children()) or isinstance(module, (nn.RNNBase, nn.RNNCellBase))


@torch.no_grad()
def measure_cost(model: nn.Module, example_inputs: ExampleInputs, batch_dim: int | None = 0) -> Cost:
    """Count params, MACs, activation and model bytes of `model` by one real forward pass at batch 1.

    Args:
        model: any module; it runs in eval mode (its training flag is restored afterwards).
        example_inputs: one tensor or a tuple of positional arguments.
        batch_dim: axis along which every input tensor is cut to one sample (1 for time-major RNN
            inputs [T, N, F]); None runs the inputs exactly as given.

    Returns:
        `Cost` with int fields, per the shared contract (see `deepiot.cost.types.Cost`); activation bytes
        take each RNN layer as one call (`rnn_layer_bytes`). A container of RNN modules (e.g. a
        `StackedRNN`) is not a leaf, so only its inner modules are counted.
    """
    macs = 0
    activation_bytes = 0

    def record_call(module: nn.Module, args: tuple[Any, ...], kwargs: dict, output: Any) -> None:
        nonlocal macs, activation_bytes
        macs += module_macs(module, args, output)
        activation_bytes = max(activation_bytes, call_activation_bytes(module, args, kwargs, output))

    counted = [module for module in model.modules() if _is_counted(module)]
    handles = [module.register_forward_hook(record_call, with_kwargs=True) for module in counted]
    was_training = model.training
    try:
        model.eval()
        model(*as_batch_of_one(example_inputs, batch_dim))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return Cost(
        params=sum(parameter.numel() for parameter in model.parameters()),
        macs=int(macs),
        activation_bytes=int(activation_bytes),
        model_bytes=tensor_bytes(list(model.state_dict().values())),
    )
