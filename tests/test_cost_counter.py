from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deepiot.cost.counter import measure_cost
from deepiot.models import VGG, DeepSense, LeNet5, LeNet300, LSTMClassifier
from deepiot.structure import Structure, slice_model
from deepiot.structure.recurrent import StackedRNN

REFERENCE_MODELS = [
    (LeNet5, (1, 28, 28)),
    (LeNet300, (1, 28, 28)),
    (VGG, (3, 32, 32)),
    (LSTMClassifier, (128, 6)),
    (DeepSense, (128, 6)),
]


def flop_counter_macs(model: nn.Module, example: torch.Tensor) -> int:
    """PyTorch's own FLOP counter (2 FLOPs per multiply-accumulate) as the independent reference."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example)
    return counter.get_total_flops() // 2


def recurrent_weight_macs(rnn: nn.Module, steps: int) -> int:
    """Every recurrent weight matrix [gates·H, fan_in] does one MAC per element per step and direction."""
    weights = [value for name, value in rnn.named_parameters() if name.startswith("weight_")]
    return steps * sum(weight.numel() for weight in weights)


class GroupedConv1d(nn.Module):
    """Strided, padded, grouped and dilated 1-D convolutions on a sensor window [N, T, C]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(6, 12, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(12, 24, kernel_size=3, groups=3, dilation=2)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x.transpose(1, 2))))  # [N, 24, T']
        return self.head(x.mean(dim=2))


class StackedGRU(nn.Module):
    """A container of single-layer bidirectional GRUs (the shape a sliced stacked RNN may take)."""

    def __init__(self, sizes: tuple[int, ...] = (6, 10, 7)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.GRU(in_size * (1 if index == 0 else 2), out_size, batch_first=True, bidirectional=True)
            for index, (in_size, out_size) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x, _ = layer(x)  # [N, T, 2 * H_layer]
        return x


@pytest.mark.parametrize(("cls", "shape"), REFERENCE_MODELS)
def test_params_and_model_bytes_match_real_tensors(cls, shape):
    model = cls(input_shape=shape)
    cost = measure_cost(model, torch.randn(1, *shape))
    assert cost.params == sum(parameter.numel() for parameter in model.parameters())
    state_bytes = sum(value.numel() * value.element_size() for value in model.state_dict().values())
    assert cost.model_bytes == state_bytes


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (LeNet5(), (1, 28, 28)),
        (LeNet300(), (1, 28, 28)),
        (VGG(), (3, 32, 32)),
        (GroupedConv1d(), (50, 6)),
        (nn.Conv2d(8, 16, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), groups=4), (8, 11, 9)),
        (nn.Linear(6, 5), (128, 6)),  # applied per time step on [N, T, F]
    ],
    ids=["lenet5", "lenet300", "vgg", "conv1d", "grouped-conv2d", "linear-per-position"],
)
def test_macs_match_torch_flop_counter(model, shape):
    example = torch.randn(1, *shape)
    assert measure_cost(model, example).macs == flop_counter_macs(model, example)


@pytest.mark.parametrize(
    "rnn",
    [
        nn.LSTM(5, 7, num_layers=3, batch_first=True),
        nn.LSTM(5, 7, num_layers=2, batch_first=True, bidirectional=True),
        nn.LSTM(5, 7, num_layers=2, batch_first=True, proj_size=3),
        nn.GRU(5, 9, num_layers=2, batch_first=True),
        nn.GRU(5, 9, num_layers=2, batch_first=True, bidirectional=True),
        nn.RNN(5, 4, batch_first=True),
    ],
    ids=["lstm-3layer", "lstm-bidir", "lstm-proj", "gru-2layer", "gru-bidir", "rnn"],
)
@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_recurrent_macs_equal_gate_formula(rnn):
    steps = 11
    cost = measure_cost(rnn, torch.randn(1, steps, rnn.input_size))
    assert cost.macs == recurrent_weight_macs(rnn, steps)


def test_recurrent_macs_follow_sequence_length_of_time_major_input():
    rnn = nn.GRU(4, 6)  # batch_first=False: [T, N, F]
    steps = 17
    expected = recurrent_weight_macs(rnn, steps)
    assert measure_cost(rnn, torch.randn(steps, 3, 4), batch_dim=1).macs == expected
    assert measure_cost(rnn, torch.randn(steps, 1, 4), batch_dim=None).macs == expected


def test_stacked_container_of_single_layer_rnns():
    model = StackedGRU()
    steps = 13
    expected = sum(recurrent_weight_macs(layer, steps) for layer in model.layers)
    assert measure_cost(model, torch.randn(1, steps, 6)).macs == expected


def test_lstm_classifier_macs_are_recurrent_plus_head():
    model = LSTMClassifier(input_shape=(20, 6), hidden_size=8, num_layers=2)
    expected = recurrent_weight_macs(model.lstm, 20) + model.fc.weight.numel()
    assert measure_cost(model, torch.randn(1, 20, 6)).macs == expected


def test_lstm_cell_counts_one_step_per_call():
    cell = nn.LSTMCell(5, 7)
    expected = cell.weight_ih.numel() + cell.weight_hh.numel()
    assert measure_cost(cell, torch.randn(1, 5)).macs == expected


def test_activation_bytes_is_largest_leaf_call():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    example = torch.randn(1, 3, 16, 16)
    calls, x = [], example
    for layer in model:
        y = layer(x)
        calls.append((x.numel() + y.numel()) * 4)  # float32 input + output
        x = y
    assert measure_cost(model, example).activation_bytes == max(calls)


def test_activation_bytes_count_each_recurrent_layer_with_its_states():
    lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    example = torch.randn(1, 9, 3)
    output, (hidden, cell) = lstm(example)
    layer_states = (hidden[0].numel() + cell[0].numel()) * 4  # h_n[l], c_n[l] of one layer
    layer_calls = [
        (example.numel() + output.numel()) * 4 + layer_states,  # layer 0: input → first hidden sequence
        2 * output.numel() * 4 + layer_states,  # layer 1: hidden sequence → output
    ]
    assert measure_cost(lstm, example).activation_bytes == max(layer_calls)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_multi_layer_rnn_costs_like_its_layers_as_separate_modules(kind, bidirectional):
    layers = [kind(4, 6, batch_first=True, bidirectional=bidirectional)]
    layers.append(kind(6 * (2 if bidirectional else 1), 6, batch_first=True, bidirectional=bidirectional))
    stacked = StackedRNN(layers)
    merged = kind(4, 6, num_layers=2, batch_first=True, bidirectional=bidirectional)
    example = torch.randn(1, 11, 4)
    assert measure_cost(merged, example) == measure_cost(stacked, example)


def test_initial_state_is_shared_among_layers():
    gru = nn.GRU(3, 5, num_layers=2)  # time-major [T, N, F]
    example, initial = torch.randn(7, 1, 3), torch.randn(2, 1, 5)
    output, hidden = gru(example, initial)
    per_layer_states = (hidden.numel() + initial.numel()) * 4 // 2
    expected = max(example.numel(), output.numel()) * 4 + output.numel() * 4 + per_layer_states
    assert measure_cost(gru, (example, initial), batch_dim=None).activation_bytes == expected


def test_example_batch_is_cut_to_one_sample():
    model = DeepSense(conv_channels=8, gru_hidden=10)
    assert measure_cost(model, torch.randn(5, 128, 6)) == measure_cost(model, torch.randn(1, 128, 6))


def test_module_called_twice_is_counted_twice():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert measure_cost(model, torch.randn(1, 4)).macs == 2 * shared.weight.numel()


def test_restores_training_mode_and_removes_hooks():
    model = LeNet5().train()
    measure_cost(model, torch.randn(1, 1, 28, 28))
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())


def test_unknown_parametrised_module_raises():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    with pytest.raises(ValueError, match="module type Scale"):
        measure_cost(nn.Sequential(Scale()), torch.randn(1, 3))


def kept_every(structure: Structure, step_of_group) -> dict[str, list[int]]:
    return {
        group.name: list(range(0, group.size, step_of_group(index)))
        for index, group in enumerate(structure.groups)
    }


@pytest.mark.parametrize(("cls", "shape"), REFERENCE_MODELS)
def test_structure_cost_model_agrees_with_counter_on_original_and_sliced(cls, shape):
    """The structure layer's modelled cost and this independent counter must give identical numbers."""
    model = cls(input_shape=shape).eval()
    example = torch.randn(1, *shape)
    structure = Structure.from_model(model, example)
    assert structure.cost() == measure_cost(model, example)
    kept = kept_every(structure, lambda index: 2)
    counts = {name: len(indices) for name, indices in kept.items()}
    assert structure.cost(counts) == measure_cost(slice_model(model, structure, kept), example)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (LSTMClassifier(input_shape=(128, 6)), (128, 6)),
        (LSTMClassifier(input_shape=(128, 6), num_layers=3, bidirectional=True), (128, 6)),
        (DeepSense(), (128, 6)),
    ],
    ids=["lstm-classifier", "lstm-3layer-bidir", "deepsense"],
)
def test_structure_cost_agrees_with_counter_when_rnn_layers_differ_in_width(model, shape):
    model = model.eval()
    example = torch.randn(1, *shape)
    structure = Structure.from_model(model, example)
    kept = kept_every(structure, lambda index: 2 + index)  # later groups keep 1/3, 1/4, ...
    counts = {name: len(indices) for name, indices in kept.items()}
    sliced = slice_model(model, structure, kept)
    assert any(isinstance(module, StackedRNN) for module in sliced.modules())
    assert structure.cost(counts) == measure_cost(sliced, example)
