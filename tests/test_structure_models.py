"""Models for the structure tests (reference models at small widths + models defined only here),
and discovery tests: group names, sizes and kinds for each of them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepiot.models import VGG, DeepSense, LeNet5, LeNet300, LSTMClassifier
from deepiot.structure import Structure


class Conv1dBN(nn.Module):
    """Two Conv1d → BN → ReLU blocks over a sensor window [N, T, C], global average, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(6, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 10, 3, stride=2)
        self.bn2 = nn.BatchNorm1d(10)
        self.fc = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x.transpose(1, 2))))  # [N, 8, T]
        x = F.relu(self.bn2(self.conv2(x)))  # [N, 10, T/2]
        return self.fc(x.mean(dim=2))


class ResidualBN(nn.Module):
    """Residual block whose add is followed by BatchNorm and a sigmoid (mask must come after both)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch1 = nn.Conv2d(8, 6, 3, padding=1)
        self.branch2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        stem = torch.relu(self.stem(x))  # [N, 8, 8, 8]
        residual = stem + self.branch2(torch.relu(self.branch1(stem)))  # [N, 8, 8, 8]
        y = torch.sigmoid(self.bn(residual))
        y = F.max_pool2d(torch.tanh(self.head(y)), 2)  # [N, 5, 4, 4]
        return self.fc(y.view(y.size(0), -1))


class ConcatBranches(nn.Module):
    """Two conv branches concatenated along channels and consumed by one conv, then flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(1, 4, 3, padding=1)
        self.right = nn.Conv2d(1, 6, 5, padding=2)
        self.merge = nn.Conv2d(10, 7, 3)
        self.fc1 = nn.Linear(7 * 4 * 4, 9)
        self.fc2 = nn.Linear(9, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.elu(self.left(x)), F.leaky_relu(self.right(x))], dim=1)  # [N, 10, 6, 6]
        y = F.silu(self.merge(y))  # [N, 7, 4, 4]
        return self.fc2(torch.sigmoid(self.fc1(torch.flatten(y, 1))))


class SigmoidTanhMLP(nn.Module):
    """MLP with sigmoid/tanh activations (sigmoid(0) = 0.5: masks must sit after the activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 9)
        self.fc2 = nn.Linear(9, 7)
        self.fc3 = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.sigmoid(self.fc1(x)))))


class GeluConcatMLP(nn.Module):
    """MLP with functional F.gelu and torch.cat of two Linear branches consumed by one Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 6)
        self.b = nn.Linear(10, 4)
        self.mix = nn.Linear(10, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.gelu(self.a(x)), self.b(x).relu()], dim=-1)  # [N, 10]
        return self.out(F.gelu(self.mix(y)) * 2.0)


class CNNLSTM(nn.Module):
    """1-D CNN + stacked LSTM sensor model that classifies from the last time step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.lstm = nn.LSTM(8, 5, num_layers=2, batch_first=True)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        features = F.relu(self.bn(self.conv(x.permute(0, 2, 1))))  # [N, 8, T]
        outputs, _ = self.lstm(features.permute(0, 2, 1))  # [N, T, 5]
        return self.fc(outputs[:, -1])


class GRUFinalState(nn.Module):
    """Stacked GRU classified from h_n[-1], with a sigmoid between the RNN and its consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 7, num_layers=2, batch_first=True)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        _, state = self.gru(x)  # [2, N, 7]
        return self.fc(torch.sigmoid(state[-1]))


class ElmanClassifier(nn.Module):
    """nn.RNN (2 layers, bidirectional, inter-layer dropout) on the raw input, classified from the mean step."""

    def __init__(self, nonlinearity: str = "tanh") -> None:
        super().__init__()
        self.rnn = nn.RNN(
            6, 7, 2, nonlinearity=nonlinearity, batch_first=True, bidirectional=True, dropout=0.3
        )
        self.fc = nn.Linear(14, 4)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.rnn(x)  # [N, T, 14]
        return self.fc(outputs.mean(dim=1))


class ConvReluRNN(nn.Module):
    """1-D conv, then a relu nn.RNN classified from its top layer's final state h_n[-1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.rnn = nn.RNN(8, 6, 2, nonlinearity="relu", batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        features = torch.tanh(self.conv(x.transpose(1, 2)))  # [N, 8, T]
        _, state = self.rnn(features.transpose(1, 2))  # [2, N, 6]
        return self.fc(state[-1])


class DropoutLSTMGRU(nn.Module):
    """A stacked LSTM then a stacked GRU, both with inter-layer dropout (trained that way)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 5, 2, batch_first=True, dropout=0.25)
        self.gru = nn.GRU(5, 4, 3, batch_first=True, dropout=0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.lstm(x)  # [N, T, 5]
        outputs, _ = self.gru(outputs)  # [N, T, 4]
        return self.fc(outputs[:, -1])


class HardCodedView(nn.Module):
    """LeNet-like CNN with a hard-coded flatten size `view(-1, 16 * 5 * 5)` (rewritten when slicing)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [N, 6, 12, 12]
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # [N, 16, 4, 4]
        x = x.view(-1, 16 * 4 * 4)
        return self.fc2(F.relu(self.fc1(x)))


class TimeDistributedMLP(nn.Module):
    """Linear layers applied per time step of [N, T, C] (mask broadcast as [N, 1, C]), mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        self.fc3 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.hardtanh(self.fc2(torch.relu(self.fc1(x))))  # [N, T, 5]
        return self.fc3(y.mean(dim=1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gating: conv channels × sigmoid(excite(...)) share one mask (elementwise mul);
    the gate is reshaped with a hard-coded channel count `view(n, 8, 1, 1)`; BN without affine/stats."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8, affine=False, track_running_stats=False)
        self.squeeze = nn.Linear(8, 3)
        self.excite = nn.Linear(3, 8)
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm(self.conv(x)))  # [N, 8, H, W]
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean(dim=(2, 3))))))  # [N, 8]
        y = y * gate.view(gate.size(0), 8, 1, 1)  # [N, 8, H, W]
        return self.fc(F.relu(self.head(y)).mean(dim=(2, 3)))


class FlattenUnflatten(nn.Module):
    """Channels flattened with the image positions, then split back out (`view(n, 6, -1)`) for a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.conv1d = nn.Conv1d(6, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        flat = torch.tanh(self.conv(x)).flatten(1)  # [N, 6·H·W]
        sequence = flat.view(flat.size(0), 6, -1)  # [N, 6, H·W]
        return self.fc(self.conv1d(sequence).amax(dim=2))


Case = tuple[Callable[[], nn.Module], tuple[int, ...], dict[str, tuple[str, int]]]
# name → (constructor, input shape without batch, expected groups {name: (kind, size)} in forward order)
CASES: dict[str, Case] = {
    "lenet300": (
        lambda: LeNet300(hidden1=12, hidden2=8),
        (1, 28, 28),
        {"fc1": ("linear", 12), "fc2": ("linear", 8)},
    ),
    "lenet5": (
        lambda: LeNet5(conv1_channels=4, conv2_channels=6, fc_features=10),
        (1, 28, 28),
        {"conv1": ("conv", 4), "conv2": ("conv", 6), "fc1": ("linear", 10)},
    ),
    "vgg": (
        lambda: VGG(input_shape=(3, 16, 16), widths=(8, "M", 16, "M"), classifier_features=12),
        (3, 16, 16),
        {"features.0": ("conv", 8), "features.4": ("conv", 16), "classifier.0": ("linear", 12)},
    ),
    "conv1d_bn": (Conv1dBN, (16, 6), {"conv1": ("conv", 8), "conv2": ("conv", 10)}),
    "residual_bn": (
        ResidualBN,
        (3, 8, 8),
        {"stem": ("conv", 8), "branch1": ("conv", 6), "head": ("conv", 5)},
    ),
    "concat_branches": (
        ConcatBranches,
        (1, 6, 6),
        {"left": ("conv", 4), "right": ("conv", 6), "merge": ("conv", 7), "fc1": ("linear", 9)},
    ),
    "sigmoid_tanh_mlp": (SigmoidTanhMLP, (12,), {"fc1": ("linear", 9), "fc2": ("linear", 7)}),
    "gelu_concat_mlp": (
        GeluConcatMLP,
        (10,),
        {"a": ("linear", 6), "b": ("linear", 4), "mix": ("linear", 5)},
    ),
    "stacked_lstm": (
        lambda: LSTMClassifier(input_shape=(12, 6), hidden_size=5, num_layers=2),
        (12, 6),
        {"lstm.l0": ("rnn", 5), "lstm.l1": ("rnn", 5)},
    ),
    "bidirectional_lstm": (
        lambda: LSTMClassifier(input_shape=(12, 6), hidden_size=5, num_layers=2, bidirectional=True),
        (12, 6),
        {"lstm.l0": ("rnn", 5), "lstm.l1": ("rnn", 5)},
    ),
    "stacked_gru": (GRUFinalState, (10, 6), {"gru.l0": ("rnn", 7), "gru.l1": ("rnn", 7)}),
    "rnn_tanh_bidir_dropout": (ElmanClassifier, (9, 6), {"rnn.l0": ("rnn", 7), "rnn.l1": ("rnn", 7)}),
    "rnn_relu_bidir_dropout": (
        lambda: ElmanClassifier("relu"),
        (9, 6),
        {"rnn.l0": ("rnn", 7), "rnn.l1": ("rnn", 7)},
    ),
    "conv_rnn_relu": (
        ConvReluRNN,
        (10, 6),
        {"conv": ("conv", 8), "rnn.l0": ("rnn", 6), "rnn.l1": ("rnn", 6)},
    ),
    "dropout_lstm_gru": (
        DropoutLSTMGRU,
        (8, 6),
        {
            "lstm.l0": ("rnn", 5),
            "lstm.l1": ("rnn", 5),
            "gru.l0": ("rnn", 4),
            "gru.l1": ("rnn", 4),
            "gru.l2": ("rnn", 4),
        },
    ),
    "deepsense": (
        lambda: DeepSense(conv_channels=6, gru_hidden=5, sensor_layers=2, merged_layers=2),
        (32, 6),
        {
            "acc_convs.0": ("conv", 6),
            "acc_convs.3": ("conv", 6),
            "gyro_convs.0": ("conv", 6),
            "gyro_convs.3": ("conv", 6),
            "merged_convs.0": ("conv", 6),
            "merged_convs.3": ("conv", 6),
            "gru.l0": ("rnn", 5),
            "gru.l1": ("rnn", 5),
        },
    ),
    "cnn_lstm": (
        CNNLSTM,
        (12, 6),
        {"conv": ("conv", 8), "lstm.l0": ("rnn", 5), "lstm.l1": ("rnn", 5)},
    ),
    "hard_coded_view": (
        HardCodedView,
        (1, 28, 28),
        {"conv1": ("conv", 6), "conv2": ("conv", 16), "fc1": ("linear", 12)},
    ),
    "time_distributed_mlp": (TimeDistributedMLP, (9, 6), {"fc1": ("linear", 8), "fc2": ("linear", 5)}),
    "squeeze_excite": (
        SqueezeExcite,
        (3, 5, 5),
        {"conv": ("conv", 8), "squeeze": ("linear", 3), "head": ("conv", 4)},
    ),
    "flatten_unflatten": (FlattenUnflatten, (1, 5, 5), {"conv": ("conv", 6), "conv1d": ("conv", 5)}),
}


def build_case(name: str, batch: int = 3, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """(model in eval mode with non-trivial BN statistics, random input [batch, ...])."""
    constructor, shape, _ = CASES[name]
    torch.manual_seed(seed)
    model = constructor()
    for module in model.modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.affine
            and module.track_running_stats
        ):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval(), torch.randn(batch, *shape)


@pytest.mark.parametrize("name", list(CASES))
def test_discovery_finds_expected_groups_in_forward_order(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    found = {group.name: (group.kind, group.size) for group in structure.groups}
    assert list(found.items()) == list(CASES[name][2].items())


@pytest.mark.parametrize("name", list(CASES))
def test_logit_layer_is_never_a_group(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert all(last_linear not in group.modules for group in structure.groups)
    assert last_linear in structure.excluded


def test_residual_add_merges_producers_into_one_group():
    model, x = build_case("residual_bn")
    group = Structure.from_model(model, x).group("stem")
    assert group.modules == ("stem", "branch2")


def test_elementwise_gate_merges_producers_into_one_group():
    model, x = build_case("squeeze_excite")
    assert Structure.from_model(model, x).group("conv").modules == ("conv", "excite")


def test_discovery_does_not_change_the_model():
    model, x = build_case("conv1d_bn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Structure.from_model(model, x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_discovery_works_with_a_single_example():
    model, x = build_case("lenet5", batch=1)
    assert [g.name for g in Structure.from_model(model, x).groups] == ["conv1", "conv2", "fc1"]
