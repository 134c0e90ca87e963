"""Discovery errors name the node, its type and the workaround; declarations (exclude/declared) work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_structure_models import GRUFinalState, build_case
from torch import Tensor, nn

from deepiot.structure import MaskedNetwork, Structure, StructureError, slice_model
from deepiot.structure.recurrent import StackedRNN


class ConvGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(self.conv(x)).mean(dim=(2, 3)))


class ChannelSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).softmax(dim=-1))


class ChannelSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x)[:, :3])


class BatchMixingReshape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).reshape(-1, 8))  # [N·4, 8]: channels end up in the batch


class MisalignedResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 5)
        self.c = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1) + self.c(x))


class InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 3, padding=1)
        self.head = nn.Conv1d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(torch.relu(x + self.conv(x))).mean(dim=2))


class CellStateHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        _, (_, cell) = self.lstm(x)
        return self.fc(cell[-1])


class InitialState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.gru(x, torch.zeros(1, x.shape[0], 4))
        return self.fc(outputs[:, -1])


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).view(2, 4))


class TwinBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(4, 5)
        self.head_a = nn.Linear(5, 2)
        self.head_b = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head_a(F.relu(self.a(x))) + self.head_b(torch.tanh(self.b(x)))


class DepthwiseConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.depthwise = nn.Conv1d(4, 4, 3, groups=4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.depthwise(self.conv(x)).mean(dim=2))


def _discover(model: nn.Module, *shape: int, **kwargs) -> Structure:
    return Structure.from_model(model.eval(), torch.randn(2, *shape), **kwargs)


@pytest.mark.parametrize(
    ("model", "shape", "node", "detail"),
    [
        (ConvGroupNorm(), (3, 6, 6), "module 'norm' of type GroupNorm", "not known to preserve channels"),
        (ChannelSoftmax(), (5,), "method Tensor.softmax", "normalises over the channel dimension"),
        (ChannelSlice(), (5,), "function _operator.getitem", "indexes into the channel dimension"),
        (
            BatchMixingReshape(),
            (2, 8),
            "method Tensor.reshape",
            "merges the channel dimension with the batch",
        ),
        (MisalignedResidual(), (4,), "function _operator.add", "do not line up"),
        (CellStateHead(), (5, 3), "module 'fc' of type Linear", "LSTM cell state"),
        (InitialState(), (5, 3), "module 'gru' of type GRU", "initial state hx"),
        (DepthwiseConv(), (2, 9), "module 'depthwise' of type Conv1d", "depthwise"),
    ],
)
def test_unsupported_ops_name_node_type_and_workaround(model, shape, node, detail):
    with pytest.raises(StructureError, match="exclude=") as caught:
        _discover(model, *shape)
    assert node in str(caught.value) and detail in str(caught.value)


def test_exclude_keeps_a_producer_uncompressed_and_unblocks_discovery():
    structure = _discover(ConvGroupNorm(), 3, 6, 6, exclude=["conv"])
    assert structure.groups == [] and structure.excluded["conv"] == "excluded by the caller"
    assert [g.name for g in _discover(ChannelSoftmax(), 5, exclude=["fc1"]).groups] == []


def test_exclude_one_rnn_layer():
    model, x = build_case("stacked_lstm")
    structure = Structure.from_model(model, x, exclude=["lstm.l0"])
    assert [g.name for g in structure.groups] == ["lstm.l1"]
    kept = {"lstm.l1": [1, 3]}
    with torch.no_grad():
        masked = MaskedNetwork(model, structure)(x, structure.masks_from_kept(kept))
        torch.testing.assert_close(slice_model(model, structure, kept)(x), masked, atol=1e-5, rtol=0)


def test_unknown_exclude_name_is_rejected():
    with pytest.raises(StructureError, match=r"exclude names \['fc9'\], which are not producers"):
        _discover(SigmoidFree(), 3, exclude=["fc9"])


class SigmoidFree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x))


def test_residual_with_the_input_pins_the_producer():
    structure = _discover(InputResidual(), 3, 7)
    assert [g.name for g in structure.groups] == ["head"]
    assert "combines its channels" in structure.excluded["conv"]


def test_declared_groups_share_one_mask():
    model = TwinBranches().eval()
    x = torch.randn(3, 4)
    structure = Structure.from_model(model, x, declared=[["a", "b"]])
    assert [(g.name, g.modules) for g in structure.groups] == [("a", ("a", "b"))]
    kept = {"a": [0, 3]}
    with torch.no_grad():
        masked = MaskedNetwork(model, structure)(x, structure.masks_from_kept(kept))
        torch.testing.assert_close(slice_model(model, structure, kept)(x), masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ([["a", "head_a"]], "'head_a', which is not a compressible producer"),
        ([["a"]], "at least two producer names"),
        (["ab"], "at least two producer names"),
    ],
)
def test_bad_declarations_are_rejected(declared, message):
    with pytest.raises(StructureError, match=message):
        Structure.from_model(TwinBranches(), torch.randn(2, 4), declared=declared)


def test_declared_sizes_must_match():
    model, x = build_case("concat_branches")
    with pytest.raises(StructureError, match=r"joins producers of different sizes \[4, 6\]"):
        Structure.from_model(model, x, declared=[["left", "right"]])


def test_untraceable_and_fixed_batch_models_are_rejected_clearly():
    with pytest.raises(StructureError, match="torch.fx could not trace DataDependent"):
        _discover(DataDependent(), 3)
    with pytest.raises(StructureError, match="must accept any batch size"):
        _discover(FixedBatch(), 3)


@pytest.mark.parametrize(
    ("kept", "message"),
    [
        ({"fc1": []}, "keeps zero elements"),
        ({"fc1": [2, 1]}, "sorted and distinct"),
        ({"fc1": [1, 1]}, "sorted and distinct"),
        ({"fc1": [0, 12]}, r"must lie in \[0, 12\)"),
        ({"fc3": [0]}, r"unknown groups \['fc3'\]"),
        ({"fc1": [0.5]}, "1-D list of ints"),
    ],
)
def test_bad_kept_indices_are_rejected(kept, message):
    model, x = build_case("lenet300")
    with pytest.raises(StructureError, match=message):
        slice_model(model, Structure.from_model(model, x), kept)


def test_kept_bool_masks_are_accepted():
    model, x = build_case("lenet300")
    structure = Structure.from_model(model, x)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 5]] = True
    assert slice_model(model, structure, {"fc1": mask}).fc1.out_features == 2


def test_structure_rejects_a_different_architecture():
    model, x = build_case("lenet300")
    structure = Structure.from_model(model, x)
    with pytest.raises(StructureError, match="does not trace to the graph"):
        MaskedNetwork(SigmoidFree(), structure)


def test_final_state_indexing_is_rewritten_for_stacked_layers():
    """Layers keeping different widths become a StackedRNN whose h_n is per layer; h_n[-1] still works."""
    model = GRUFinalState().eval()
    x = torch.randn(3, 10, 6)
    structure = Structure.from_model(model, x)
    kept = {"gru.l0": [2], "gru.l1": [0, 4, 6]}
    sliced = slice_model(model, structure, kept)
    assert isinstance(sliced.gru, StackedRNN)
    with torch.no_grad():
        masked = MaskedNetwork(model, structure)(x, structure.masks_from_kept(kept))
        torch.testing.assert_close(sliced(x), masked, atol=1e-5, rtol=0)
