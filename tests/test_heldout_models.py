"""Held-out models (issue 7, items 11–14): nn.RNN, stacked RNNs with dropout, merged-group exclusion, plans.

Each model is compressed end to end by `deepiot.compress` (a few iterations), and the result is checked
the way the project checks GRU/LSTM: the sliced model's cost equals `measure_cost`, the export passes its
ONNX Runtime check, and the saved plan rebuilds the same sliced model.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from deepiot.api import OutputOptions, compress
from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.cost.counter import measure_cost
from deepiot.export import TOLERANCE
from deepiot.finetune import FinetuneConfig
from deepiot.structure import SlicingPlan, Structure, StructureError, build_sliced_model

STEPS, CHANNELS, CLASSES = 8, 6, 3


class ElmanNet(nn.Module):
    """A 2-layer nn.RNN straight on the raw input (inter-layer dropout), classified from the mean step."""

    def __init__(self, nonlinearity: str = "tanh") -> None:
        super().__init__()
        self.rnn = nn.RNN(CHANNELS, 10, 2, nonlinearity=nonlinearity, batch_first=True, dropout=0.3)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.rnn(x)  # [N, T, 10]
        return self.fc(outputs.mean(dim=1))


class ReluElmanNet(ElmanNet):
    def __init__(self) -> None:
        super().__init__("relu")


class DropoutGRU(nn.Module):
    """A stacked GRU with dropout > 0 (the issue's failing case), classified from the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(CHANNELS, 10, 3, batch_first=True, dropout=0.4)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.gru(x)  # [N, T, 10]
        return self.fc(outputs[:, -1])


class DropoutLSTM(nn.Module):
    """A stacked bidirectional LSTM with dropout > 0, classified from h_n of the top layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 8, 2, batch_first=True, dropout=0.5, bidirectional=True)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(x)  # [4, N, 8]
        return self.fc(torch.cat([h_n[-2], h_n[-1]], dim=1))


def _data(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, STEPS, CHANNELS, generator=generator)
    return TensorDataset(inputs, torch.randint(0, CLASSES, (64,), generator=generator))


QUICK = CompressionConfig(
    loop=LoopConfig(max_iterations=12, batch_size=16, eval_every=6, eval_batch_size=64),
    finetune=FinetuneConfig(steps=3, batch_size=16, eval_every=3),
    schedule=ScheduleConfig(final_tau=0.6, steps=3, every=3),
)
NO_LATENCY = OutputOptions(latency_threads=None)  # a plain call otherwise: no model_config given


@pytest.mark.parametrize(
    "model_class",
    [ElmanNet, ReluElmanNet, DropoutGRU, DropoutLSTM],
    ids=["rnn_tanh", "rnn_relu", "gru_dropout", "lstm_dropout"],
)
def test_compress_slices_exports_and_rebuilds_held_out_recurrent_models(model_class, tmp_path):
    torch.manual_seed(0)
    model, data = model_class(), _data()
    result = compress(model, data, data, config=QUICK, out_dir=tmp_path, progress=False, outputs=NO_LATENCY)
    example = data.tensors[0][:1]
    assert result.report["cost"]["compressed"] == measure_cost(result.sliced_model, example)._asdict()
    kept = {group["name"]: group["kept"] for group in result.report["groups"]}
    assert all(count >= 1 for count in kept.values()) and len(kept) >= 2
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["onnx"]["exporter"] == "torchscript"  # recurrent: the fast exporter by default
    assert manifest["check"]["max_abs_diff"]["onnx"] <= TOLERANCE["onnx"]

    plan = SlicingPlan.load(tmp_path / "slicing_plan.json")
    rebuilt = build_sliced_model(plan, result.sliced_model.state_dict(), example)
    inputs = data.tensors[0][:5]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), result.sliced_model.eval()(inputs), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Item 13: a merged group that must be excluded is named whole, so one exclude=[...] gets past it
# ----------------------------------------------------------------------------------------------------------


class ResidualCumsum(nn.Module):
    """A residual stream (stem + two branches merged by adds) read by an op deepiot cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(CHANNELS, 8, 3, padding=1)
        self.branch1 = nn.Conv1d(8, 8, 3, padding=1)
        self.branch2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(4, 5)  # a producer outside the stream, still compressible
        self.fc = nn.Linear(8 * STEPS + 5, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x.transpose(1, 2))  # [N, 8, T]
        h = h + torch.relu(self.branch1(h))
        h = h + torch.relu(self.branch2(h))
        side = torch.relu(self.head(x[:, 0, :4]))  # [N, 5]
        return self.fc(torch.cat([torch.cumsum(h, dim=1).flatten(1), side], dim=1))


def test_exclusion_message_names_every_member_of_the_merged_group_at_once():
    model, x = ResidualCumsum(), torch.randn(2, STEPS, CHANNELS)
    with pytest.raises(StructureError) as raised:
        Structure.from_model(model, x)
    message = str(raised.value)
    suggested = re.search(r"exclude=(\[[^\]]*\])", message).group(1)
    assert sorted(eval(suggested)) == ["branch1", "branch2", "stem"]  # the whole stream, one round
    assert "'cumsum'" in message
    structure = Structure.from_model(model, x, exclude=eval(suggested))
    assert [group.name for group in structure.groups] == ["head"]


# ----------------------------------------------------------------------------------------------------------
# Item 14: what a plan needs to rebuild the model
# ----------------------------------------------------------------------------------------------------------


class WidthNet(nn.Module):
    """A model whose constructor needs an argument (no input_shape keyword)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(CHANNELS * STEPS, hidden)
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_plain_compress_stores_the_class_path_and_input_shape(tmp_path):
    torch.manual_seed(0)
    data = _data()
    result = compress(ElmanNet(), data, data, config=QUICK, progress=False, outputs=NO_LATENCY)
    assert result.plan.model_config == {
        "_target_": f"{__name__}.ElmanNet",
        "input_shape": [STEPS, CHANNELS],
    }  # ElmanNet takes no input_shape: build_model passes it only to constructors that take it


def test_plan_of_a_class_needing_arguments_warns_then_says_what_is_missing(tmp_path):
    torch.manual_seed(0)
    data = _data()
    model = WidthNet(hidden=12)
    with pytest.warns(UserWarning, match=r"will not be able to rebuild WidthNet.*missing 1 required"):
        result = compress(
            model, data, data, config=QUICK, out_dir=tmp_path, progress=False, outputs=NO_LATENCY
        )
    plan = SlicingPlan.load(tmp_path / "slicing_plan.json")
    assert "_target_" not in plan.model_config and plan.model_config["input_shape"] == [STEPS, CHANNELS]
    example = data.tensors[0][:1]
    with pytest.raises(StructureError, match=r"model_config has no '_target_'.*OutputOptions\(model_config="):
        build_sliced_model(plan, model.state_dict(), example)

    plan.model_config = {"_target_": f"{__name__}.WidthNet", "input_shape": [STEPS, CHANNELS]}
    with pytest.raises(StructureError, match=r"cannot rebuild its model .*WidthNet.*missing 1 required"):
        build_sliced_model(plan, model.state_dict(), example)

    plan.model_config["hidden"] = 12  # what the user passes in OutputOptions(model_config=...)
    rebuilt = build_sliced_model(plan, result.sliced_model.state_dict(), example)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(data.tensors[0]), result.sliced_model.eval()(data.tensors[0]))


def test_given_model_config_is_kept_and_completed_with_the_input_shape(tmp_path):
    torch.manual_seed(0)
    data = _data()
    outputs = OutputOptions(
        model_config={"_target_": f"{__name__}.WidthNet", "hidden": 12}, latency_threads=None
    )
    result = compress(WidthNet(hidden=12), data, data, config=QUICK, progress=False, outputs=outputs)
    assert result.plan.model_config == {
        "_target_": f"{__name__}.WidthNet",
        "hidden": 12,
        "input_shape": [STEPS, CHANNELS],
    }
