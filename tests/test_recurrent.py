"""LSTM/GRU/RNN primitives: masked recurrence, physical slicing, StackedRNN export, weight matrix and cost."""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnxruntime
import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from deepiot.structure.recurrent import (
    GATES,
    StackedElmanRNN,
    StackedGRU,
    StackedLSTM,
    StackedRNN,
    masked_rnn_forward,
    rnn_kind,
    rnn_layer_macs,
    rnn_layer_params,
    rnn_weight_matrix,
    slice_rnn,
)

RELU_RNN = functools.partial(nn.RNN, nonlinearity="relu")
KINDS = [nn.LSTM, nn.GRU, nn.RNN, RELU_RNN]
GATED_KINDS = [nn.LSTM, nn.GRU]  # the dynamo ONNX exporter takes tens of seconds per RNN: kept to these
EXACT = {"atol": 1e-6, "rtol": 0.0}
SLICED = {"atol": 1e-5, "rtol": 0.0}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _per_layer_states(state: Tensor | tuple, num_layers: int, directions: int) -> list[Tensor]:
    """h_n / c_n of a multi-layer module ([L*D, N, H]) or a StackedRNN (tuple) → per layer [D, N, H_l]."""
    if isinstance(state, Tensor):
        return list(state.split(directions))
    assert len(state) == num_layers
    return list(state)


def _module_type(kind) -> type[nn.Module]:
    return kind.func if isinstance(kind, functools.partial) else kind


def _gates(kind) -> int:
    return GATES[kind(1, 1).mode]


def _kind_name(kind) -> str:
    """The `rnn_layer_params` kind: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"."""
    return kind(1, 1).mode


def _stacked_type(kind) -> type[StackedRNN]:
    return {nn.LSTM: StackedLSTM, nn.GRU: StackedGRU, nn.RNN: StackedElmanRNN}[_module_type(kind)]


def _final_states(module_output: tuple, kind: type[nn.Module]) -> list[Tensor | tuple]:
    """[h_n] for GRU, [h_n, c_n] for LSTM."""
    return list(module_output[1]) if kind is nn.LSTM else [module_output[1]]


# ----------------------------------------------------------------------------------------------------------
# masked_rnn_forward: unmasked == the fused module
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_unmasked_forward_matches_module(kind, batch_first, num_layers, bidirectional, bias):
    module = kind(5, 7, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(3, 6, 5)
    assert_close(masked_rnn_forward(module, x), module(x), **EXACT)


@pytest.mark.parametrize("kind", KINDS)
def test_unmasked_forward_matches_module_with_initial_state_and_unbatched_input(kind):
    module = kind(5, 7, 2, batch_first=True, bidirectional=True)
    batched_hx = torch.randn(4, 3, 7)  # [L*D, N, H]
    unbatched_hx = torch.randn(4, 7)  # [L*D, H]
    if kind is nn.LSTM:
        batched_hx, unbatched_hx = (batched_hx, torch.randn(4, 3, 7)), (unbatched_hx, torch.randn(4, 7))
    x = torch.randn(3, 6, 5)
    assert_close(masked_rnn_forward(module, x, hx=batched_hx), module(x, batched_hx), **EXACT)
    assert_close(masked_rnn_forward(module, x[0], hx=unbatched_hx), module(x[0], unbatched_hx), **EXACT)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_dropout_matches_module(kind):
    module = kind(5, 7, 2, dropout=0.4).eval()
    x = torch.randn(6, 3, 5)
    assert_close(masked_rnn_forward(module, x), module(x), **EXACT)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_training_dropout_matches_the_fused_module_draw_for_draw(kind, batch_first):
    """Training with dropout > 0: unmasked, the same seed gives the fused module's output exactly."""
    module = kind(5, 7, 3, dropout=0.5, batch_first=batch_first).train()
    x = torch.randn(6, 3, 5)
    torch.manual_seed(1)
    fused = module(x)
    torch.manual_seed(1)
    assert_close(masked_rnn_forward(module, x), fused, **EXACT)
    assert not torch.allclose(masked_rnn_forward(module, x)[0], fused[0])  # a fresh draw per call


@pytest.mark.parametrize("kind", KINDS)
def test_training_dropout_keeps_dropped_units_silent_in_every_layer(kind):
    module = kind(5, 7, 2, dropout=0.5, batch_first=True).train()
    dropped = [torch.tensor([1, 4]), torch.tensor([2])]
    masks = [torch.ones(7).index_fill(0, index, 0.0) for index in dropped]
    output, states = masked_rnn_forward(module, torch.randn(3, 6, 5), masks)
    h_n = states[0] if kind is nn.LSTM else states  # [L, N, H]
    assert torch.all(output[..., dropped[1]] == 0)
    assert torch.all(h_n[0][:, dropped[0]] == 0) and torch.all(h_n[1][:, dropped[1]] == 0)


@pytest.mark.parametrize(
    ("module", "x", "masks", "message"),
    [
        (nn.LSTM(5, 7, proj_size=3), torch.randn(6, 2, 5), None, "proj_size=3"),
        (nn.LSTMCell(5, 7), torch.randn(6, 2, 5), None, "got LSTMCell"),
        (nn.GRU(5, 7), torch.randn(6, 2, 4), None, r"expected input .*got shape \(6, 2, 4\)"),
        (nn.GRU(5, 7, 2), torch.randn(6, 2, 5), [None], "expected 2 hidden masks"),
        (nn.GRU(5, 7), torch.randn(6, 2, 5), [torch.ones(3, 7)], r"shape \[7\] or \[2, 7\], got \(3, 7\)"),
    ],
)
def test_masked_forward_rejects_bad_input(module, x, masks, message):
    with pytest.raises(ValueError, match=message):
        masked_rnn_forward(module, x, masks)


def test_masked_forward_rejects_packed_sequence():
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(6, 2, 5), [6, 4])
    with pytest.raises(ValueError, match="PackedSequence"):
        masked_rnn_forward(nn.LSTM(5, 7), packed)


# ----------------------------------------------------------------------------------------------------------
# masked_rnn_forward: mask semantics
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_zero_mask_silences_unit_at_every_step_in_both_directions(kind):
    module = kind(5, 7, 1, batch_first=True, bidirectional=True)
    mask = torch.ones(7)
    mask[[2, 5]] = 0.0
    output, states = masked_rnn_forward(module, torch.randn(3, 6, 5), [mask])
    h_n = states[0] if kind is nn.LSTM else states
    assert torch.all(output[..., [2, 5, 9, 12]] == 0)  # [N, T, 2H]: units 2, 5 of both directions
    assert torch.all(output[..., [0, 7]].abs().sum(dim=(0, 1)) > 0)  # kept units live (relu may hit 0)
    assert torch.all(h_n[:, :, [2, 5]] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_per_sequence_masks_equal_separate_runs_with_shared_masks(kind):
    module = kind(5, 7, 2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 6, 5)
    masks = [torch.rand(3, 7), torch.rand(3, 7)]  # soft masks [N, H]
    output, _ = masked_rnn_forward(module, x, masks)
    for index in range(3):
        shared = [mask[index] for mask in masks]  # [H]
        single, _ = masked_rnn_forward(module, x[index : index + 1], shared)
        assert_close(output[index : index + 1], single, **EXACT)


@pytest.mark.parametrize("kind", KINDS)
def test_dropped_units_do_not_leak_through_their_weights_or_cell_state(kind):
    """Masking h alone removes a unit: perturbing every weight that touches it changes no kept value."""
    module = kind(5, 6, 2, batch_first=True, bidirectional=True)
    dropped = [torch.tensor([1, 4]), torch.tensor([0, 3, 5])]
    masks = [torch.ones(6).index_fill(0, index, 0.0) for index in dropped]
    perturbed = copy.deepcopy(module)
    gates = _gates(kind)
    with torch.no_grad():
        for name, parameter in perturbed.named_parameters():
            layer = int(name.split("_l")[1][0])
            rows = torch.cat([dropped[layer] + gate * 6 for gate in range(gates)])
            parameter[rows] += 5.0  # every gate (and so the cell state) of the dropped units
            if name.startswith("weight_hh"):
                parameter[:, dropped[layer]] += 5.0  # their recurrent fan-out
            if name.startswith("weight_ih") and layer == 1:
                parameter[:, torch.cat([dropped[0], dropped[0] + 6])] += 5.0  # their fan-out to layer 1
    x = torch.randn(3, 6, 5)
    reference, changed = masked_rnn_forward(module, x, masks), masked_rnn_forward(perturbed, x, masks)
    kept_output = torch.tensor(
        [1, 2, 4, 7, 8, 10]
    )  # [N, T, 2H]: layer 1 keeps units 1, 2, 4, both directions
    assert_close(changed[0][..., kept_output], reference[0][..., kept_output], **EXACT)
    assert not torch.allclose(masked_rnn_forward(perturbed, x)[0], masked_rnn_forward(module, x)[0])
    for changed_state, state in zip(
        _final_states(changed, kind), _final_states(reference, kind), strict=True
    ):
        for layer, (changed_layer, layer_state) in enumerate(
            zip(changed_state.split(2), state.split(2), strict=True)
        ):
            kept = torch.ones(6, dtype=torch.bool).index_fill(0, dropped[layer], False)
            assert_close(changed_layer[..., kept], layer_state[..., kept], **EXACT)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_run_with_returned_state_equals_one_run(kind):
    """h_n (masked) and c_n (true cell state) continue the recurrence exactly, also for soft masks."""
    module = kind(5, 7, 2, batch_first=True)
    x = torch.randn(3, 10, 5)
    masks = [torch.rand(3, 7), torch.rand(7)]
    whole = masked_rnn_forward(module, x, masks)
    first = masked_rnn_forward(module, x[:, :4], masks)
    second = masked_rnn_forward(module, x[:, 4:], masks, hx=first[1])
    assert_close(torch.cat([first[0], second[0]], dim=1), whole[0], **EXACT)
    assert_close(second[1], whole[1], **EXACT)


# ----------------------------------------------------------------------------------------------------------
# slice_rnn == masked_rnn_forward with hard masks
# ----------------------------------------------------------------------------------------------------------

HIDDEN = 6
KEPT_COUNTS = {"mixed": [4, 2, 5], "one_unit": [3, 1, 6], "all": [6, 6, 6], "equal": [3, 3, 3]}


def _random_kept(count: int, size: int) -> Tensor:
    return torch.randperm(size)[:count].sort().values


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(KEPT_COUNTS))
def test_sliced_module_equals_masked_network(kind, bidirectional, batch_first, case):
    module = kind(5, HIDDEN, 3, batch_first=batch_first, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    kept_input = torch.arange(5) if case == "all" else _random_kept(3, 5)
    kept_hidden = [_random_kept(count, HIDDEN) for count in KEPT_COUNTS[case]]
    masks = [torch.zeros(HIDDEN).index_fill(0, kept, 1.0) for kept in kept_hidden]
    x = torch.randn(4, 7, 5) if batch_first else torch.randn(7, 4, 5)

    masked = masked_rnn_forward(module, x * torch.zeros(5).index_fill(0, kept_input, 1.0), masks)
    sliced_module = slice_rnn(module, kept_input, kept_hidden)
    sliced = sliced_module(x[..., kept_input])

    equal_counts = len(set(KEPT_COUNTS[case])) == 1
    assert type(sliced_module) is (_module_type(kind) if equal_counts else _stacked_type(kind))
    top_kept = torch.cat([kept_hidden[-1] + direction * HIDDEN for direction in range(directions)])
    assert_close(sliced[0], masked[0][..., top_kept], **SLICED)
    for sliced_state, masked_state in zip(
        _final_states(sliced, kind), _final_states(masked, kind), strict=True
    ):
        sliced_layers = _per_layer_states(sliced_state, 3, directions)
        for layer, masked_layer in enumerate(_per_layer_states(masked_state, 3, directions)):
            assert_close(sliced_layers[layer], masked_layer[..., kept_hidden[layer]], **SLICED)


@pytest.mark.parametrize("kind", KINDS)
def test_slicing_builds_new_parameters_and_leaves_the_source_unchanged(kind):
    module = kind(5, 6, 2, bidirectional=True)
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    sliced = slice_rnn(module, None, [torch.tensor([0, 2]), torch.tensor([1, 3, 5])])
    sliced(torch.randn(4, 2, 5)).__getitem__(0).sum().backward()
    assert all(torch.equal(module.state_dict()[name], tensor) for name, tensor in before.items())
    source_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    assert not source_storages & {p.untyped_storage().data_ptr() for p in sliced.parameters()}
    expected = rnn_layer_params(rnn_kind(module), 5, 2, True, True) + rnn_layer_params(
        _kind_name(kind), 4, 3, True, True
    )
    assert sum(p.numel() for p in sliced.parameters()) == expected


@pytest.mark.parametrize(
    ("kept_input", "kept_hidden", "message"),
    [
        (None, [torch.tensor([0])], "expected 2 kept-hidden index sets"),
        (
            None,
            [torch.tensor([0]), torch.tensor([], dtype=torch.long)],
            r"kept_hidden\[1\] must be a non-empty",
        ),
        (None, [torch.tensor([0, 0]), torch.tensor([1])], "distinct integer indices in"),
        (None, [torch.tensor([6]), torch.tensor([1])], r"in \[0, 6\)"),
        (
            torch.tensor([0.0, 1.0]),
            [torch.tensor([0]), torch.tensor([1])],
            r"kept_input must be .* in \[0, 5\)",
        ),
        (torch.tensor([5]), [torch.tensor([0]), torch.tensor([1])], "kept_input must be"),
    ],
)
def test_slice_rnn_rejects_bad_indices(kept_input, kept_hidden, message):
    with pytest.raises(ValueError, match=message):
        slice_rnn(nn.GRU(5, 6, 2), kept_input, kept_hidden)


# ----------------------------------------------------------------------------------------------------------
# StackedRNN
# ----------------------------------------------------------------------------------------------------------


def _split_into_single_layers(module: nn.LSTM | nn.GRU) -> StackedRNN:
    """The same network as a StackedRNN of single-layer copies (an independent construction)."""
    directions = 2 if module.bidirectional else 1
    layers = []
    for layer in range(module.num_layers):
        input_size = module.input_size if layer == 0 else directions * module.hidden_size
        options = {"nonlinearity": module.nonlinearity} if isinstance(module, nn.RNN) else {}
        single = type(module)(
            input_size,
            module.hidden_size,
            batch_first=module.batch_first,
            bidirectional=module.bidirectional,
            **options,
        )
        source = module.state_dict()
        single.load_state_dict(
            {name: source[name.replace("_l0", f"_l{layer}")] for name in single.state_dict()}
        )
        layers.append(single)
    return StackedRNN(layers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_rnn_matches_the_multilayer_module(kind, bidirectional):
    module = kind(5, 6, 3, batch_first=True, bidirectional=bidirectional)
    stacked = _split_into_single_layers(module)
    directions = 2 if bidirectional else 1
    assert isinstance(stacked, _stacked_type(kind))
    x = torch.randn(4, 7, 5)
    hx = torch.randn(3 * directions, 4, 6)
    hx = (hx, torch.randn_like(hx)) if kind is nn.LSTM else hx
    stacked_hx = tuple(s.split(directions) for s in hx) if kind is nn.LSTM else hx.split(directions)
    for expected, actual in [(module(x), stacked(x)), (module(x, hx), stacked(x, stacked_hx))]:
        assert_close(actual[0], expected[0], **EXACT)
        for actual_state, expected_state in zip(
            _final_states(actual, kind), _final_states(expected, kind), strict=True
        ):
            assert isinstance(actual_state, tuple) and len(actual_state) == 3
            assert_close(torch.cat(actual_state), expected_state, **EXACT)
    assert_close(masked_rnn_forward(stacked, x), stacked(x), **EXACT)
    assert_close(rnn_weight_matrix(stacked, 2), rnn_weight_matrix(module, 2), atol=0, rtol=0)
    assert rnn_layer_macs(stacked, 2, steps=7) == rnn_layer_macs(module, 2, steps=7)
    assert_close(copy.deepcopy(stacked)(x), stacked(x), atol=0, rtol=0)


def _narrow_stack(kind: type[nn.Module], bidirectional: bool) -> StackedRNN:
    module = kind(5, 6, 3, batch_first=True, bidirectional=bidirectional)
    return slice_rnn(module, [0, 2, 3, 4], [[0, 1, 2, 3], [5], [0, 2, 4]]).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_rnn_scripts_and_traces_to_the_same_outputs(kind):
    stacked = _narrow_stack(kind, bidirectional=True)
    x = torch.randn(2, 7, 4)
    eager = stacked(x)
    scripted = torch.jit.script(stacked)(x)
    traced = torch.jit.trace(stacked, (x,))(x)
    assert_close(scripted[0], eager[0], **EXACT)
    assert_close(traced, eager, **EXACT)
    for scripted_state, eager_state in zip(
        _final_states(scripted, kind), _final_states(eager, kind), strict=True
    ):
        assert isinstance(scripted_state, list)  # TorchScript returns the per-layer states as a list
        assert_close(tuple(scripted_state), eager_state, **EXACT)


def _check_onnx_outputs(path, stacked: StackedRNN, kind: type[nn.Module], x: Tensor) -> None:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    eager = stacked(x)
    expected = [eager[0], *[layer for state in _final_states(eager, kind) for layer in state]]
    assert len(onnx_outputs) == len(expected)
    for onnx_output, torch_output in zip(onnx_outputs, expected, strict=True):
        np.testing.assert_allclose(onnx_output, torch_output.detach().numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_rnn_torchscript_onnx_export_runs_in_onnxruntime_at_any_batch_and_length(kind, tmp_path):
    stacked = _narrow_stack(kind, bidirectional=True)
    path = tmp_path / "stacked.onnx"
    dynamic_axes = {"x": {0: "batch", 1: "steps"}}
    torch.onnx.export(
        stacked,
        (torch.randn(2, 7, 4),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes=dynamic_axes,
    )
    for shape in [(2, 7, 4), (5, 11, 4), (1, 3, 4)]:
        _check_onnx_outputs(path, stacked, kind, torch.randn(shape))


@pytest.mark.parametrize("kind", GATED_KINDS)
def test_stacked_rnn_dynamo_onnx_export_runs_in_onnxruntime_at_the_export_shape(kind, tmp_path):
    """The dynamo exporter works at the traced shape (with a dynamic length it fails even for a plain nn.GRU)."""
    stacked = _narrow_stack(kind, bidirectional=True)
    x = torch.randn(2, 7, 4)
    torch.onnx.export(stacked, (x,), str(tmp_path / "stacked.onnx"), dynamo=True)
    _check_onnx_outputs(tmp_path / "stacked.onnx", stacked, kind, x)


def test_stacked_rnn_rejects_layers_that_do_not_chain():
    with pytest.raises(ValueError, match="layer 1 has input_size=5, but the layer below outputs 12"):
        StackedRNN([nn.GRU(5, 6, bidirectional=True), nn.GRU(5, 3, bidirectional=True)])
    with pytest.raises(ValueError, match="layer 1 must be a single-layer LSTM"):
        StackedRNN([nn.LSTM(5, 6), nn.LSTM(6, 3, num_layers=2)])
    with pytest.raises(ValueError, match="got GRU"):
        StackedRNN([nn.LSTM(5, 6), nn.GRU(6, 3)])


# ----------------------------------------------------------------------------------------------------------
# Compressor input and cost
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_weight_matrix_columns_are_hidden_units(kind):
    module = kind(3, 4, 2, bidirectional=True)
    gates = _gates(kind)
    matrix = rnn_weight_matrix(module, 1)
    params = dict(module.named_parameters())
    for unit in range(4):
        expected = []
        for suffix in ("_l1", "_l1_reverse"):
            w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
            bias = params["bias_ih" + suffix] + params["bias_hh" + suffix]
            expected += [w_ih[gate * 4 + unit, column] for gate in range(gates) for column in range(8)]
            expected += [w_hh[gate * 4 + unit, column] for gate in range(gates) for column in range(4)]
            expected += [bias[gate * 4 + unit] for gate in range(gates)]
        assert_close(matrix[:, unit], torch.stack(expected).detach(), atol=0, rtol=0)
    assert matrix.shape == (2 * gates * (8 + 4 + 1), 4) and not matrix.requires_grad


def test_rnn_weight_matrix_has_zero_bias_rows_without_bias():
    module = nn.GRU(3, 4, bias=False)
    matrix = rnn_weight_matrix(module, 0)
    assert matrix.shape == (3 * (3 + 4 + 1), 4)
    assert torch.all(matrix[-3:] == 0)
    with pytest.raises(ValueError, match="layer 1 out of range"):
        rnn_weight_matrix(module, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("in_features", "hidden", "num_layers"), [(6, 128, 2), (64, 120, 2), (3, 1, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_layer_params_match_real_modules(kind, in_features, hidden, num_layers, bias, bidirectional):
    module = kind(in_features, hidden, num_layers, bias=bias, bidirectional=bidirectional)
    layer_inputs = [in_features] + [hidden * (2 if bidirectional else 1)] * (num_layers - 1)
    counted = sum(
        rnn_layer_params(_kind_name(kind), size, hidden, bias, bidirectional) for size in layer_inputs
    )
    assert counted == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "module",
    [
        nn.LSTM(5, 7, 2, bidirectional=True),
        nn.GRU(5, 7, 3),
        nn.RNN(5, 7, 2, bidirectional=True),
        _narrow_stack(nn.LSTM, True),
        _narrow_stack(RELU_RNN, False),
    ],
)
def test_rnn_layer_macs_match_counted_matmuls_at_batch_one(module):
    steps = 6
    with FlopCounterMode(display=False) as counter:
        masked_rnn_forward(module, torch.randn(1, steps, module.input_size))
    macs = sum(rnn_layer_macs(module, layer, steps=steps) for layer in range(module.num_layers))
    assert counter.get_total_flops() == 2 * macs  # one multiply-add = 2 flops


def test_rnn_layer_costs_vectorise_over_kept_counts():
    module = nn.GRU(64, 120, 2)
    kept_in, kept_hidden = torch.tensor([64.0, 10.0, 1.0]), torch.tensor([120.0, 7.0, 1.0])
    macs = rnn_layer_macs(module, 1, kept_in, kept_hidden, steps=32)
    params = rnn_layer_params("gru", kept_in, kept_hidden)
    for index in range(3):
        assert macs[index] == rnn_layer_macs(module, 1, int(kept_in[index]), int(kept_hidden[index]), 32)
        assert params[index] == sum(
            p.numel() for p in nn.GRU(int(kept_in[index]), int(kept_hidden[index])).parameters()
        )
    assert rnn_layer_macs(module, 0, steps=32) == 3 * 120 * (64 + 120) * 32


# ----------------------------------------------------------------------------------------------------------
# Gradients (the critic trains through the masked recurrence)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_and_match_the_fused_module(kind):
    module = kind(5, 6, 2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 7, 5)
    masked_output, _ = masked_rnn_forward(module, x, [torch.rand(3, 6), torch.rand(6)])
    masked_output.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    unmasked = torch.autograd.grad(masked_rnn_forward(module, x)[0].square().sum(), list(module.parameters()))
    fused = torch.autograd.grad(module(x)[0].square().sum(), list(module.parameters()))
    assert_close(unmasked, fused, atol=1e-5, rtol=1e-5)  # relu: unbounded, gradients grow large
