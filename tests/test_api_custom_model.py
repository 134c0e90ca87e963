"""deepiot.api.compress on a user-defined sensor model (conv + GRU) with TensorDatasets."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepiot.api import compress
from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.cost.counter import measure_cost
from deepiot.finetune import FinetuneConfig


class SensorNet(nn.Module):
    """The docstring example of `compress`: conv over time → GRU → mean → linear, on [N, T, C] windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, 5, padding=2)
        self.gru = nn.GRU(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.transpose(1, 2)))  # [N, 16, T]
        out, _ = self.gru(h.transpose(1, 2))  # [N, T, 24]
        return self.fc(out.mean(dim=1))


def test_compress_a_custom_sensor_model_with_keyword_shortcuts():
    torch.manual_seed(0)
    inputs, labels = torch.randn(128, 32, 6), torch.randint(0, 4, (128,))
    data = TensorDataset(inputs, labels)
    config = CompressionConfig(
        loop=LoopConfig(batch_size=32, eval_every=10),
        finetune=FinetuneConfig(steps=5, batch_size=32, eval_every=5),
        schedule=ScheduleConfig(final_tau=0.6, steps=3, every=3),
    )
    result = compress(
        SensorNet(),
        data,
        data,
        config=config,
        max_iterations=20,
        lam=1.0,
        cost="macs",
        baseline="learned",
        progress=False,
    )
    report = result.report
    assert report["config"]["loop"]["max_iterations"] == 20
    assert (report["config"]["critic"]["lam"], report["config"]["critic"]["cost"]) == (1.0, "macs")
    assert report["config"]["critic"]["baseline"] == "learned"
    assert report["config"]["loop"]["batch_size"] == 32  # fields not named by a shortcut come from `config`
    assert [group["name"] for group in report["groups"]] == ["conv", "gru.l0"]
    kept = {group["name"]: group["kept"] for group in report["groups"]}
    assert result.sliced_model.conv.out_channels == kept["conv"]
    assert result.sliced_model.gru.hidden_size == kept["gru.l0"]
    assert report["cost"]["compressed"] == measure_cost(result.sliced_model, inputs[:1])._asdict()
    assert report["latency_ms"]["original"] > 0 and report["latency_ms"]["compressed"] > 0
