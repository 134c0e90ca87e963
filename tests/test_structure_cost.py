"""Structure cost and compressor weights: modelled cost equals the sliced model's real counts."""

from __future__ import annotations

import pytest
import torch
from test_structure_models import CASES, build_case
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deepiot.cost.counter import measure_cost
from deepiot.models import LSTMClassifier
from deepiot.structure import Structure, StructureError, slice_model
from deepiot.structure.recurrent import StackedRNN, rnn_weight_matrix

RECURRENT = {
    "stacked_lstm",
    "bidirectional_lstm",
    "stacked_gru",
    "deepsense",
    "cnn_lstm",
    "rnn_tanh_bidir_dropout",
    "rnn_relu_bidir_dropout",
    "conv_rnn_relu",
    "dropout_lstm_gru",
}


class GRUStack(nn.Module):
    """Three GRU layers of one nn.GRU, read per time step by the consumer (output [N, T, 2·H])."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 8, num_layers=3, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]  # [N, T, 16]


class StackedGRUClassifier(nn.Module):
    """A StackedGRU of single-layer GRUs of different widths (a sliced model, compressed again)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = StackedRNN([nn.GRU(5, 9, batch_first=True), nn.GRU(9, 7, batch_first=True)])
        self.fc = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])  # last step [N, 7]


def _random_kept(structure: Structure, seed: int, rnn_layers: str = "random") -> dict[str, torch.Tensor]:
    """Random kept sets; RNN layers keep random / equal (half) / different (1, 2, ...) unit counts."""
    generator = torch.Generator().manual_seed(seed)
    kept, rnn_index = {}, 0
    for group in structure.groups:
        count = int(torch.randint(1, group.size + 1, (1,), generator=generator))
        if group.kind == "rnn" and rnn_layers != "random":
            count = max(1, group.size // 2) if rnn_layers == "equal" else rnn_index + 1
            rnn_index += 1
        kept[group.name] = torch.randperm(group.size, generator=generator)[:count].sort().values
    return kept


def _counts(kept: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: len(indices) for name, indices in kept.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_unsliced_cost_equals_independent_counter(name):
    model, x = build_case(name)
    assert Structure.from_model(model, x).cost() == measure_cost(model, x)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(set(CASES) - RECURRENT))
def test_cost_equals_sliced_model_counts_and_flop_counter(name, seed):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    kept = _random_kept(structure, seed)
    sliced = slice_model(model, structure, kept).eval()
    cost = structure.cost(_counts(kept))
    assert cost.params == sum(p.numel() for p in sliced.parameters())
    assert cost.model_bytes == sum(t.numel() * t.element_size() for t in sliced.state_dict().values())
    assert cost == measure_cost(sliced, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        sliced(x[:1])
    assert cost.macs == counter.get_total_flops() // 2


@pytest.mark.parametrize("rnn_layers", ["equal", "different"])
@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_recurrent_cost_equals_formula_on_sliced_shapes(name, rnn_layers):
    """All four fields match the counter, whether the sliced RNN stays one module or becomes a StackedRNN.

    Activation bytes count each RNN layer as one call, so both shapes of the sliced RNN cost alike.
    """
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    kept = _random_kept(structure, 0, rnn_layers)
    sliced = slice_model(model, structure, kept).eval()
    assert structure.cost(_counts(kept)) == measure_cost(sliced, x)
    stacked = any(isinstance(m, StackedRNN) for m in sliced.modules())
    assert stacked == (rnn_layers == "different")


def _unequal_rnn_kept(structure: Structure, seed: int) -> dict[str, torch.Tensor]:
    """Random kept sets whose RNN layers all keep different unit counts (so slicing stacks them)."""
    generator = torch.Generator().manual_seed(seed)
    rnn_groups = [group for group in structure.groups if group.kind == "rnn"]
    smallest = min(group.size for group in rnn_groups)
    rnn_counts = torch.randperm(smallest, generator=generator)[: len(rnn_groups)] + 1  # distinct, >= 1
    kept = _random_kept(structure, seed)
    for group, count in zip(rnn_groups, rnn_counts.tolist(), strict=True):
        kept[group.name] = torch.randperm(group.size, generator=generator)[:count].sort().values
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (lambda: LSTMClassifier(input_shape=(16, 6), hidden_size=9, num_layers=3), (16, 6)),
        (lambda: LSTMClassifier(input_shape=(16, 6), hidden_size=7, bidirectional=True), (16, 6)),
        (lambda: nn.Sequential(GRUStack(), nn.Linear(16, 4)), (14, 5)),
        (StackedGRUClassifier, (14, 5)),
    ],
    ids=["lstm-classifier", "lstm-classifier-bidir", "gru-3layer-bidir", "stacked-gru"],
)
def test_cost_equals_counter_on_random_unequal_rnn_widths(model, shape, seed):
    torch.manual_seed(seed)
    model, x = model().eval(), torch.randn(2, *shape)
    structure = Structure.from_model(model, x)
    kept = _unequal_rnn_kept(structure, seed)
    sliced = slice_model(model, structure, kept).eval()
    layer_widths = [module.hidden_size for module in sliced.modules() if isinstance(module, nn.RNNBase)]
    assert len(set(layer_widths)) == len(layer_widths) > 1  # every layer its own single-layer module
    assert structure.cost(_counts(kept)) == measure_cost(sliced, x)


@pytest.mark.parametrize("name", ["lenet5", "residual_bn", "deepsense", "bidirectional_lstm"])
def test_vectorised_cost_equals_one_by_one(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    samples = [_counts(_random_kept(structure, seed)) for seed in range(5)]
    batched = structure.cost(
        {g: torch.tensor([s[g] for s in samples], dtype=torch.float32) for g in samples[0]}
    )
    for field, values in zip(batched._fields, batched, strict=True):
        assert values.shape == (5,) and values.dtype == torch.float32
        expected = torch.tensor([float(getattr(structure.cost(s), field)) for s in samples])
        torch.testing.assert_close(values, expected, rtol=1e-6, atol=0.0)


def test_cost_rejects_unknown_groups_and_counts_out_of_range():
    model, x = build_case("lenet5")
    structure = Structure.from_model(model, x)
    with pytest.raises(StructureError, match="no group named 'fc2'"):
        structure.cost({"fc2": 3})
    with pytest.raises(StructureError, match=r"'conv1' must lie in \[0, 4\]"):
        structure.cost({"conv1": 5})


def test_linear_and_conv_weight_matrices():
    model, x = build_case("lenet5")
    structure = Structure.from_model(model, x)
    fc1 = structure.weight_matrix(model, "fc1")
    assert fc1.shape == (6 * 4 * 4 + 1, 10)
    torch.testing.assert_close(fc1, torch.cat([model.fc1.weight.t(), model.fc1.bias[None]]))
    conv2 = structure.weight_matrix(model, "conv2")
    assert conv2.shape == (4 * 5 * 5 + 1, 6)
    torch.testing.assert_close(conv2[:-1, 3], model.conv2.weight[3].flatten())
    assert not fc1.requires_grad and not conv2.requires_grad


def test_merged_group_weight_matrix_stacks_producers():
    model, x = build_case("residual_bn")
    structure = Structure.from_model(model, x)
    matrix = structure.weight_matrix(model, "stem")
    assert matrix.shape == (3 * 9 + 1 + 6 * 9 + 1, 8)
    torch.testing.assert_close(matrix[28:-1, 2], model.branch2.weight[2].flatten())


def test_recurrent_weight_matrix_is_the_layer_matrix():
    model, x = build_case("bidirectional_lstm")
    structure = Structure.from_model(model, x)
    for layer in (0, 1):
        matrix = structure.weight_matrix(model, f"lstm.l{layer}")
        torch.testing.assert_close(matrix, rnn_weight_matrix(model.lstm, layer))
        fan_in = 6 if layer == 0 else 10
        assert matrix.shape == (2 * 4 * (fan_in + 5 + 1), 5)


def test_weight_matrix_reads_the_given_instance():
    model, x = build_case("lenet300")
    structure = Structure.from_model(model, x)
    other = type(model)(hidden1=12, hidden2=8)
    torch.testing.assert_close(structure.weight_matrix(other, "fc2")[:-1], other.fc2.weight.t())
    assert isinstance(other.fc2, nn.Linear)
