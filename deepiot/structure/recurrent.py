"""Recurrent (LSTM/GRU/RNN) primitives of the structure layer: masked recurrence, slicing, weights, cost.

A hidden element of an LSTM/GRU/RNN (Elman, tanh or relu) layer is one hidden unit. DeepIoT (docs/design.md §2)
drops a unit by multiplying its hidden state h_t by a mask at EVERY time step inside the recurrence, so a
dropped unit feeds neither the next step nor the next layer; with hard 0/1 masks this equals the network
without the unit.
`masked_rnn_forward` computes exactly that, `slice_rnn` builds the physically smaller module, and
`rnn_weight_matrix` / `rnn_layer_macs` / `rnn_layer_params` give the compressor and the cost model their inputs.

Conventions shared by every function here:
- Gate order is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n), RNN (one block); gate k of unit j is row
  k·H + j of every weight_ih / weight_hh / bias.
- Both directions of a bidirectional layer share the unit index and therefore one mask (and one kept set).
- LSTM cell state c is never masked: c_j reaches other units only through h_j = o_j·tanh(c_j), so masking h_j
  alone removes unit j exactly. The returned c_n is the cell's true state (dropped units keep their values),
  which makes running a sequence in chunks — feeding (h_n, c_n) back as hx — equal to one run.
- `hx` is taken as an already-masked state (like the returned h_n) and used as given.
- Inter-layer dropout (`dropout` > 0, training mode) is applied to each layer's masked output sequence
  before the next layer, like PyTorch's fused modules; a dropped unit stays exactly 0 through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepiot.cost.types import RNN_GATES

GATES = RNN_GATES  # gate blocks per hidden unit, by mode (the cost contract's table)
_KINDS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}
RECURRENT_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


class _RNNSpec(NamedTuple):
    """Shape facts of an nn.LSTM / nn.GRU / nn.RNN / StackedRNN, read from the module."""

    mode: str  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"
    input_size: int
    hidden_sizes: tuple[int, ...]  # one per layer
    directions: int
    bias: bool
    batch_first: bool
    dropout: float

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.directions * self.hidden_sizes[layer - 1]


class _DirectionWeights(NamedTuple):
    weight_ih: Tensor  # [G*H, in]
    weight_hh: Tensor  # [G*H, H]
    bias_ih: Tensor | None  # [G*H]
    bias_hh: Tensor | None  # [G*H]


def _check_single_rnn(module: nn.Module, what: str) -> None:
    """Raise unless `module` is an nn.LSTM / nn.GRU / nn.RNN without projections."""
    if not isinstance(module, RECURRENT_TYPES):
        raise ValueError(
            f"{what} expects an nn.LSTM, nn.GRU, nn.RNN or StackedRNN, got {type(module).__name__}; "
            "other recurrent modules (cells stepped in Python, custom recurrences) are not supported."
        )
    if getattr(module, "proj_size", 0) > 0:
        raise ValueError(
            f"{what}: nn.LSTM with proj_size={module.proj_size} is not supported (its hidden state is "
            "projected, so a hidden unit is not one element of h); use proj_size=0."
        )


def _spec(module: nn.Module, what: str) -> _RNNSpec:
    """Read the shape facts of `module`, raising a clear error for unsupported modules."""
    if isinstance(module, StackedRNN):
        first = module.layers[0]
        hidden_sizes = tuple(layer.hidden_size for layer in module.layers)
        return _RNNSpec(
            first.mode,
            first.input_size,
            hidden_sizes,
            2 if first.bidirectional else 1,
            first.bias,
            first.batch_first,
            module.dropout,
        )
    _check_single_rnn(module, what)
    return _RNNSpec(
        module.mode,
        module.input_size,
        (module.hidden_size,) * module.num_layers,
        2 if module.bidirectional else 1,
        module.bias,
        module.batch_first,
        module.dropout,
    )


def _direction_weights(module: nn.Module, layer: int, direction: int) -> _DirectionWeights:
    """The parameters of one layer and direction (direction 1 = reverse)."""
    owner, index = (module.layers[layer], 0) if isinstance(module, StackedRNN) else (module, layer)
    suffix = f"_l{index}" + ("_reverse" if direction == 1 else "")
    return _DirectionWeights(
        getattr(owner, "weight_ih" + suffix),
        getattr(owner, "weight_hh" + suffix),
        getattr(owner, "bias_ih" + suffix, None),
        getattr(owner, "bias_hh" + suffix, None),
    )


# ----------------------------------------------------------------------------------------------------------
# Masked recurrence
# ----------------------------------------------------------------------------------------------------------


def masked_rnn_forward(
    module: nn.Module,
    x: Tensor,
    hidden_masks: Sequence[Tensor | None] | None = None,
    hx: Tensor | tuple | None = None,
) -> tuple[Tensor, Tensor | tuple]:
    """Run `module` (nn.LSTM / nn.GRU / nn.RNN / StackedRNN) with hidden units masked inside the recurrence.

    Called and returning exactly like `module(x, hx)`. `hidden_masks[layer]` is a float mask [N, H_l]
    (per sequence) or [H_l] (shared); it multiplies h_t after the cell computes it and before h_t feeds
    step t+1 and the next layer, for both directions. With every mask None this equals `module(x, hx)`
    (in training mode with dropout > 0, up to the random draw of the inter-layer dropout).

    Args:
        module: the recurrent module; its parameters are used directly, so gradients reach them.
        x: input [N, T, F] (batch_first), [T, N, F], or unbatched [T, F].
        hidden_masks: one mask (or None = unmasked) per layer; None masks nothing.
        hx: initial state in the module's own format (taken as already masked); None = zeros.

    Returns:
        (output, h_n) for GRU/RNN, (output, (h_n, c_n)) for LSTM; h_n is masked, c_n is the true cell state.
    """
    spec = _spec(module, "masked_rnn_forward")
    _check_forward_input(module, spec, x, hidden_masks)
    unbatched = x.dim() == 2
    sequence = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if spec.batch_first else x)  # [T, N, F]
    initial_h, initial_c = _initial_states(spec, hx, sequence, unbatched)
    final_h: list[Tensor] = []
    final_c: list[Tensor] = []
    for layer in range(spec.num_layers):
        mask = None if hidden_masks is None else _layer_mask(hidden_masks[layer], sequence.dtype)
        outputs = []
        for direction in range(spec.directions):
            state = (initial_h[layer][direction], initial_c[layer][direction] if initial_c else None)
            weights = _direction_weights(module, layer, direction)
            output, (h, c) = _run_direction(spec.mode, sequence, weights, state, mask, reverse=direction == 1)
            outputs.append(output)
            final_h.append(h)
            final_c.extend([] if c is None else [c])
        sequence = torch.cat(outputs, dim=2)  # [T, N, D*H_l]
        if module.training and spec.dropout > 0 and layer < spec.num_layers - 1:
            sequence = F.dropout(
                sequence, spec.dropout, training=True
            )  # like the fused module, between layers
    return _pack_outputs(module, spec, sequence, final_h, final_c, unbatched)


def _check_forward_input(
    module: nn.Module, spec: _RNNSpec, x: Tensor, hidden_masks: Sequence[Tensor | None] | None
) -> None:
    """Raise a clear error for inputs `masked_rnn_forward` cannot reproduce faithfully."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise ValueError(
            "masked_rnn_forward does not accept a PackedSequence; pad the batch to a tensor (masks are per "
            "sequence, so padding steps after a sequence's end do not change its earlier outputs)."
        )
    if x.dim() not in (2, 3) or x.shape[-1] != spec.input_size:
        raise ValueError(
            f"masked_rnn_forward expected input [N, T, {spec.input_size}] / [T, N, {spec.input_size}] or "
            f"unbatched [T, {spec.input_size}], got shape {tuple(x.shape)}."
        )
    if hidden_masks is not None and len(hidden_masks) != spec.num_layers:
        raise ValueError(
            f"masked_rnn_forward expected {spec.num_layers} hidden masks (one per layer, None = unmasked), "
            f"got {len(hidden_masks)}."
        )
    batch = 1 if x.dim() == 2 else x.shape[0 if spec.batch_first else 1]
    for layer, mask in enumerate(hidden_masks or []):
        size = spec.hidden_sizes[layer]
        if mask is not None and tuple(mask.shape) not in ((size,), (batch, size)):
            raise ValueError(
                f"masked_rnn_forward: hidden mask of layer {layer} must have shape [{size}] or "
                f"[{batch}, {size}], got {tuple(mask.shape)}."
            )


def _layer_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if mask is None else mask.to(dtype)  # [N, H] or [H], broadcasts over [N, H]


def _initial_states(
    spec: _RNNSpec, hx: Tensor | tuple | None, sequence: Tensor, unbatched: bool
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Initial (h, c) as [layer][direction] → [N, H_l]; c lists are empty for GRU."""
    h0, c0 = (hx if spec.mode == "LSTM" else (hx, None)) if hx is not None else (None, None)
    h_layers = _state_per_layer(spec, h0, sequence, unbatched)
    c_layers = _state_per_layer(spec, c0, sequence, unbatched) if spec.mode == "LSTM" else []
    return h_layers, c_layers


def _state_per_layer(
    spec: _RNNSpec, state: Tensor | Sequence[Tensor] | None, sequence: Tensor, unbatched: bool
) -> list[list[Tensor]]:
    """Split a module-format state into [layer][direction] → [N, H_l] (zeros when None)."""
    batch, directions = sequence.shape[1], spec.directions
    if state is None:
        return [[sequence.new_zeros(batch, size) for _ in range(directions)] for size in spec.hidden_sizes]
    if isinstance(state, Tensor):  # nn.LSTM / nn.GRU format [L*D, N, H] (or unbatched [L*D, H])
        state = [state[layer * directions : (layer + 1) * directions] for layer in range(spec.num_layers)]
    per_layer = [s.unsqueeze(1) if unbatched else s for s in state]  # each [D, N, H_l]
    return [[s[direction] for direction in range(directions)] for s in per_layer]


def _run_direction(
    mode: str,
    sequence: Tensor,
    weights: _DirectionWeights,
    state: tuple[Tensor, Tensor | None],
    mask: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, Tensor | None]]:
    """One layer, one direction: sequence [T, N, F] → outputs [T, N, H], final (h, c)."""
    # The input projection of all steps in one matmul; for LSTM and RNN both biases fold into it.
    input_bias = weights.bias_ih
    if mode != "GRU" and weights.bias_ih is not None:
        input_bias = weights.bias_ih + weights.bias_hh
    # unbind (not indexing per step): its backward is one stack instead of T zero-filled [T, N, G*H] tensors.
    projected = F.linear(sequence, weights.weight_ih, input_bias).unbind(0)  # T × [N, G*H]
    h, c = state
    outputs: list[Tensor] = []
    for step_input in reversed(projected) if reverse else projected:
        if mode == "LSTM":
            h, c = _lstm_step(step_input, h, c, weights.weight_hh)
        elif mode == "GRU":
            h = _gru_step(step_input, h, weights.weight_hh, weights.bias_hh)
        else:
            h = _elman_step(step_input, h, weights.weight_hh, relu=mode == "RNN_RELU")
        if mask is not None:
            h = h * mask  # [N, H] * ([N, H] or [H])
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return torch.stack(outputs), (h, c)  # [T, N, H]


def _lstm_step(projected: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM cell; `projected` [N, 4H] already holds W_ih·x + b_ih + b_hh."""
    gates = torch.addmm(projected, h, weight_hh.t())  # [N, 4H]
    input_gate, forget_gate, cell_input, output_gate = gates.chunk(4, dim=1)  # 4 × [N, H]
    c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(cell_input)
    return torch.sigmoid(output_gate) * torch.tanh(c), c


def _gru_step(projected: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """GRU cell; `projected` [N, 3H] holds W_ih·x + b_ih (b_hh stays inside r·(W_hn·h + b_hn))."""
    recurrent = F.linear(h, weight_hh, bias_hh)  # [N, 3H]
    reset_x, update_x, new_x = projected.chunk(3, dim=1)  # 3 × [N, H]
    reset_h, update_h, new_h = recurrent.chunk(3, dim=1)  # 3 × [N, H]
    reset = torch.sigmoid(reset_x + reset_h)
    update = torch.sigmoid(update_x + update_h)
    candidate = torch.tanh(new_x + reset * new_h)
    return candidate + update * (h - candidate)  # (1 - z)·n + z·h


def _elman_step(projected: Tensor, h: Tensor, weight_hh: Tensor, relu: bool) -> Tensor:
    """Elman RNN cell; `projected` [N, H] already holds W_ih·x + b_ih + b_hh."""
    pre_activation = torch.addmm(projected, h, weight_hh.t())  # [N, H]
    return torch.relu(pre_activation) if relu else torch.tanh(pre_activation)


def _pack_outputs(
    module: nn.Module,
    spec: _RNNSpec,
    sequence: Tensor,
    final_h: list[Tensor],
    final_c: list[Tensor],
    unbatched: bool,
) -> tuple[Tensor, Tensor | tuple]:
    """Put output [T, N, D*H] and final states ([N, H_l] per layer·direction) in the module's format."""
    output = (
        sequence.squeeze(1) if unbatched else (sequence.transpose(0, 1) if spec.batch_first else sequence)
    )

    def pack(finals: list[Tensor]) -> Tensor | tuple[Tensor, ...]:
        per_layer = [
            torch.stack(finals[layer * spec.directions : (layer + 1) * spec.directions])  # [D, N, H_l]
            for layer in range(spec.num_layers)
        ]
        per_layer = [state.squeeze(1) if unbatched else state for state in per_layer]
        return tuple(per_layer) if isinstance(module, StackedRNN) else torch.cat(per_layer)  # [L*D, N, H]

    return output, ((pack(final_h), pack(final_c)) if spec.mode == "LSTM" else pack(final_h))


# ----------------------------------------------------------------------------------------------------------
# Stacked layers of different widths
# ----------------------------------------------------------------------------------------------------------


class StackedRNN(nn.Module):
    """Single-layer nn.LSTM / nn.GRU / nn.RNN modules of different widths, called like one multi-layer module.

    `StackedRNN(layers)` returns a `StackedLSTM`, `StackedGRU` or `StackedElmanRNN` (each has a statically
    typed forward, so TorchScript compiles it). The final states of layers with different widths cannot be
    stacked into one tensor, so h_n (and c_n) is a tuple of per-layer tensors [directions, N, H_l] (a list
    under TorchScript); `h_n[-1]` is still the top layer. `hx` uses the same per-layer format. Inter-layer
    dropout (training only) is applied between layers like nn.LSTM's.
    """

    def __new__(cls, layers: Sequence[nn.Module] | None = None, *args, **kwargs):
        if cls is StackedRNN and layers:
            by_type = ((nn.LSTM, StackedLSTM), (nn.GRU, StackedGRU), (nn.RNN, StackedElmanRNN))
            cls = next((stacked for kind, stacked in by_type if isinstance(layers[0], kind)), cls)
        return super().__new__(cls)

    def __init__(self, layers: Sequence[nn.LSTM | nn.GRU | nn.RNN], dropout: float = 0.0) -> None:
        super().__init__()
        _check_stackable(layers)
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)
        self.dropout = float(dropout)
        self.mode = layers[0].mode
        self.input_size = layers[0].input_size
        self.hidden_sizes = [layer.hidden_size for layer in layers]
        self.batch_first = layers[0].batch_first
        self.bidirectional = layers[0].bidirectional
        self.bias = layers[0].bias

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout > 0 else ""

    def _between_layers(self, index: int, output: Tensor) -> Tensor:
        if index < self.num_layers - 1 and self.dropout > 0:
            output = F.dropout(output, self.dropout, self.training)
        return output


def _check_stackable(layers: Sequence[nn.Module]) -> None:
    """Raise unless `layers` are single-layer RNNs of one kind whose widths chain."""
    if len(layers) == 0:
        raise ValueError("StackedRNN needs at least one layer.")
    for layer in layers:
        _check_single_rnn(layer, "StackedRNN")
    shared = [
        (layer.mode, layer.batch_first, layer.bidirectional, layer.bias) for layer in layers
    ]  # per layer
    for index, layer in enumerate(layers):
        if layer.num_layers != 1 or shared[index] != shared[0]:
            raise ValueError(
                f"StackedRNN layer {index} must be a single-layer {layers[0].mode} with the first layer's "
                f"batch_first/bidirectional/bias, got {layer}."
            )
        below = (
            layers[index - 1].hidden_size * (2 if layer.bidirectional else 1) if index else layer.input_size
        )
        if layer.input_size != below:
            raise ValueError(
                f"StackedRNN layer {index} has input_size={layer.input_size}, but the layer below outputs "
                f"{below} features."
            )


class StackedGRU(StackedRNN):
    """A `StackedRNN` of nn.GRU layers: forward(x, hx) → (output, h_n per layer)."""

    def forward(self, x: Tensor, hx: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        finals: list[Tensor] = []
        for index, layer in enumerate(self.layers):
            if hx is None:
                x, h = layer(x)
            else:
                x, h = layer(x, hx[index])
            finals.append(h)  # [D, N, H_l]
            x = self._between_layers(index, x)
        if torch.jit.is_scripting():
            return x, finals
        return x, tuple(finals)


class StackedElmanRNN(StackedGRU):
    """A `StackedRNN` of nn.RNN (tanh or relu) layers: forward(x, hx) → (output, h_n per layer)."""


class StackedLSTM(StackedRNN):
    """A `StackedRNN` of nn.LSTM layers: forward(x, (h0s, c0s)) → (output, (h_n, c_n) per layer)."""

    def forward(
        self, x: Tensor, hx: tuple[list[Tensor], list[Tensor]] | None = None
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]]]:
        final_h: list[Tensor] = []
        final_c: list[Tensor] = []
        for index, layer in enumerate(self.layers):
            if hx is None:
                x, (h, c) = layer(x)
            else:
                x, (h, c) = layer(x, (hx[0][index], hx[1][index]))
            final_h.append(h)  # [D, N, H_l]
            final_c.append(c)  # [D, N, H_l]
            x = self._between_layers(index, x)
        if torch.jit.is_scripting():
            return x, (final_h, final_c)
        return x, (tuple(final_h), tuple(final_c))


# ----------------------------------------------------------------------------------------------------------
# Physical slicing
# ----------------------------------------------------------------------------------------------------------


def slice_rnn(
    module: nn.Module,
    kept_input: Tensor | Sequence[int] | None,
    kept_hidden: Sequence[Tensor | Sequence[int]],
) -> nn.Module:
    """Build a NEW, smaller recurrent module keeping input features `kept_input` and layer l's `kept_hidden[l]`.

    Weights are copied into fresh modules (never edited in place, which would leave nn.LSTM's flat weight
    list stale — pytorch issue 33618). Outputs keep the order of `kept_hidden[-1]` (bidirectional: forward
    half then reverse half). Returns a multi-layer module of the source's type when every layer keeps the
    same number of units, otherwise a `StackedRNN`.

    Args:
        module: nn.LSTM, nn.GRU, nn.RNN or StackedRNN.
        kept_input: indices into the input features; None keeps all.
        kept_hidden: per layer, indices of the hidden units to keep (at least one each).
    """
    spec = _spec(module, "slice_rnn")
    kept_hidden = _check_kept(spec, kept_input, kept_hidden)
    kept_input = (
        torch.arange(spec.input_size) if kept_input is None else torch.as_tensor(kept_input, dtype=torch.long)
    )
    layer_inputs = [kept_input] + [
        _output_features(kept, spec, layer) for layer, kept in enumerate(kept_hidden[:-1])
    ]
    layer_states = [
        _sliced_layer_state(module, spec, layer, columns, kept)
        for layer, (columns, kept) in enumerate(zip(layer_inputs, kept_hidden, strict=True))
    ]
    counts = {len(kept) for kept in kept_hidden}
    reference = next(module.parameters())
    if len(counts) == 1:
        return _build_rnn(spec, len(kept_input), counts.pop(), spec.num_layers, layer_states, reference)
    layers = [
        _build_rnn(spec, len(columns), len(kept), 1, [state], reference)
        for columns, kept, state in zip(layer_inputs, kept_hidden, layer_states, strict=True)
    ]
    return StackedRNN(layers, dropout=spec.dropout)


def _check_kept(
    spec: _RNNSpec, kept_input: Tensor | Sequence[int] | None, kept_hidden: Sequence[Tensor | Sequence[int]]
) -> list[Tensor]:
    """Validate the kept index sets; returns kept_hidden as int64 tensors."""
    if len(kept_hidden) != spec.num_layers:
        raise ValueError(
            f"slice_rnn expected {spec.num_layers} kept-hidden index sets, got {len(kept_hidden)}."
        )
    named = [
        (f"kept_hidden[{layer}]", kept, size)
        for layer, (kept, size) in enumerate(zip(kept_hidden, spec.hidden_sizes, strict=True))
    ]
    if kept_input is not None:
        named.insert(0, ("kept_input", kept_input, spec.input_size))
    for name, kept, size in named:
        indices = torch.as_tensor(kept)
        integer = not (indices.is_floating_point() or indices.dtype == torch.bool)
        valid = indices.dim() == 1 and integer and len(indices) > 0
        if not valid or indices.min() < 0 or indices.max() >= size or len(indices.unique()) != len(indices):
            raise ValueError(
                f"slice_rnn: {name} must be a non-empty 1-D set of distinct integer indices in [0, {size}), "
                f"got {kept!r}."
            )
    return [torch.as_tensor(kept, dtype=torch.long) for kept in kept_hidden]


def _output_features(kept: Tensor, spec: _RNNSpec, layer: int) -> Tensor:
    """Indices of layer `layer`'s output features for its kept units: [kept] or [kept, H + kept]."""
    return torch.cat([kept + direction * spec.hidden_sizes[layer] for direction in range(spec.directions)])


def _gate_rows(kept: Tensor, hidden: int, gates: int) -> Tensor:
    """Rows of every gate block for the kept units: [g·H + kept for each gate g]."""
    return torch.cat([kept + gate * hidden for gate in range(gates)])  # [G * len(kept)]


def _sliced_layer_state(
    module: nn.Module, spec: _RNNSpec, layer: int, columns: Tensor, kept: Tensor
) -> dict[str, Tensor]:
    """Sliced parameters of one layer, keyed by the l0 names of a single-layer module ("weight_ih_l0"...)."""
    rows = _gate_rows(kept, spec.hidden_sizes[layer], GATES[spec.mode])
    state = {}
    for direction in range(spec.directions):
        suffix = "_l0" + ("_reverse" if direction == 1 else "")
        weights = _direction_weights(module, layer, direction)
        device = weights.weight_hh.device  # index on the weights' device (the indices are built on the CPU)
        rows, columns, kept = rows.to(device), columns.to(device), kept.to(device)
        state["weight_ih" + suffix] = weights.weight_ih.detach()[rows][:, columns]  # [G*h, in_kept]
        state["weight_hh" + suffix] = weights.weight_hh.detach()[rows][:, kept]  # [G*h, h]
        if spec.bias:
            state["bias_ih" + suffix] = weights.bias_ih.detach()[rows]  # [G*h]
            state["bias_hh" + suffix] = weights.bias_hh.detach()[rows]  # [G*h]
    return state


def _build_rnn(
    spec: _RNNSpec,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    layer_states: list[dict[str, Tensor]],
    reference: Tensor,
) -> nn.LSTM | nn.GRU | nn.RNN:
    """A fresh nn.LSTM / nn.GRU / nn.RNN loaded with the per-layer sliced parameters."""
    module_types = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
    nonlinearity = {"RNN_TANH": {"nonlinearity": "tanh"}, "RNN_RELU": {"nonlinearity": "relu"}}
    module = module_types[spec.mode](
        input_size,
        hidden_size,
        num_layers,
        bias=spec.bias,
        batch_first=spec.batch_first,
        dropout=spec.dropout if num_layers > 1 else 0.0,
        bidirectional=spec.directions == 2,
        **nonlinearity.get(spec.mode, {}),
        device=reference.device,
        dtype=reference.dtype,
    )
    state = {
        name.replace("_l0", f"_l{layer}"): tensor
        for layer, layer_state in enumerate(layer_states)
        for name, tensor in layer_state.items()
    }
    module.load_state_dict(state)
    return module


# ----------------------------------------------------------------------------------------------------------
# Compressor input and cost
# ----------------------------------------------------------------------------------------------------------


def rnn_weight_matrix(module: nn.Module, layer: int) -> Tensor:
    """The compressor's W for one RNN layer: [G·(in + H + 1) · directions, H], column j = hidden unit j.

    Row layout per direction: G input blocks (gate g's weight_ih rows for unit j, `in` rows each), then G
    recurrent blocks (weight_hh, H rows each), then G bias rows (b_ih + b_hh; zeros for bias=False, so the
    row count depends on shapes only); the reverse direction's rows follow the forward's. Detached: the
    compressor reads the critic's weights but never sends gradient into them.
    """
    spec = _spec(module, "rnn_weight_matrix")
    if not 0 <= layer < spec.num_layers:
        raise ValueError(
            f"rnn_weight_matrix: layer {layer} out of range for a {spec.num_layers}-layer module."
        )
    gates, hidden = GATES[spec.mode], spec.hidden_sizes[layer]
    blocks = []
    for direction in range(spec.directions):
        weights = _direction_weights(module, layer, direction)
        for matrix in (weights.weight_ih, weights.weight_hh):
            per_gate = matrix.detach().view(gates, hidden, -1)  # [G, H, fan_in]
            blocks.append(per_gate.transpose(1, 2).reshape(-1, hidden))  # [G*fan_in, H]
        bias = weights.bias_ih + weights.bias_hh if spec.bias else weights.weight_hh.new_zeros(gates * hidden)
        blocks.append(bias.detach().view(gates, hidden))  # [G, H]
    return torch.cat(blocks)  # [D*G*(in + H + 1), H]


def rnn_kind(module: nn.Module) -> str:
    """The kind of an nn.LSTM / nn.GRU / nn.RNN / StackedRNN: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
    return _spec(module, "rnn_kind").mode.lower()


def rnn_layer_macs(
    module: nn.Module,
    layer: int,
    in_features: int | Tensor | None = None,
    hidden: int | Tensor | None = None,
    steps: int = 1,
) -> int | Tensor:
    """Multiply-accumulates of one RNN layer at batch 1: G·H·(in + H) per step per direction, × steps.

    `in_features` / `hidden` default to the layer's real sizes; pass kept counts (ints or Tensors [N],
    vectorised over sampled structures) to cost a sliced structure.
    """
    spec = _spec(module, "rnn_layer_macs")
    if not 0 <= layer < spec.num_layers:
        raise ValueError(f"rnn_layer_macs: layer {layer} out of range for a {spec.num_layers}-layer module.")
    in_features = spec.layer_input_size(layer) if in_features is None else in_features
    hidden = spec.hidden_sizes[layer] if hidden is None else hidden
    return spec.directions * GATES[spec.mode] * hidden * (in_features + hidden) * steps


def rnn_layer_params(
    kind: str, in_features: int | Tensor, hidden: int | Tensor, bias: bool = True, bidirectional: bool = False
) -> int | Tensor:
    """Parameters of one LSTM/GRU/RNN layer: directions · G·H·(in + H + 2·bias) (ints or Tensors [N])."""
    if kind.lower() not in _KINDS:
        raise ValueError(f"rnn_layer_params: kind must be one of {sorted(_KINDS)}, got {kind!r}.")
    gates = GATES[_KINDS[kind.lower()]]
    return (2 if bidirectional else 1) * gates * hidden * (in_features + hidden + (2 if bias else 0))
