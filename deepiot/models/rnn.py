"""Recurrent classifiers for sensor windows: a stacked LSTM and the DeepSense-style conv+GRU network."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LSTMClassifier(nn.Module):
    """Stacked LSTM over a sensor window [N, T, C]; the mean of the top layer's outputs over time → linear.

    The paper compresses a deep LSTM for speech; here it runs on HAPT windows.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (128, 6),
        num_classes: int = 6,
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        _, channels = input_shape
        self.lstm = nn.LSTM(channels, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.lstm(x)  # [N, T, H * directions]
        return self.fc(outputs.mean(dim=1))


def _conv_stack(
    in_channels: int, channels: int, kernel_size: int, layers: int, first_stride: int
) -> nn.Sequential:
    """`layers` × (Conv1d → BatchNorm1d → ReLU); the first conv has stride `first_stride`."""
    modules: list[nn.Module] = []
    for index in range(layers):
        stride = first_stride if index == 0 else 1
        modules += [
            nn.Conv1d(in_channels, channels, kernel_size, stride=stride, padding=kernel_size // 2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
        ]
        in_channels = channels
    return nn.Sequential(*modules)


class DeepSense(nn.Module):
    """DeepSense-style network (Yao et al., WWW 2017) for accelerometer + gyroscope windows [N, T, 6].

    Architecture (defaults as in the DeepIoT code: 64 filters, 120 GRU units, kernel 5):
      1. acc = x[..., 0:3], gyro = x[..., 3:6], each as [N, 3, T];
      2. per-sensor stacks: 3 × (Conv1d 64@5 → BN → ReLU), the first with stride 2 → [N, 64, T/2] each;
      3. concatenate the two sensors along channels → [N, 128, T/2];
      4. merged stack: 3 × (Conv1d 64@5 → BN → ReLU), the first with stride 2 → [N, 64, T/4];
      5. 2-layer GRU (120 units) over the T/4 steps → mean over time → Linear(120, classes).
    Differences from the original DeepSense: strided 1-D convolutions over the raw window replace the
    per-interval Fourier features and 2-D convs (the recurrent layer then runs over T/4 = 32 steps).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (128, 6),
        num_classes: int = 6,
        conv_channels: int = 64,
        kernel_size: int = 5,
        sensor_layers: int = 3,
        merged_layers: int = 3,
        gru_hidden: int = 120,
        gru_layers: int = 2,
    ) -> None:
        super().__init__()
        _, channels = input_shape
        if channels != 6:
            raise ValueError(
                f"DeepSense expects 6 input channels (acc x/y/z, gyro x/y/z), got input_shape={input_shape}"
            )
        self.acc_convs = _conv_stack(3, conv_channels, kernel_size, sensor_layers, first_stride=2)
        self.gyro_convs = _conv_stack(3, conv_channels, kernel_size, sensor_layers, first_stride=2)
        self.merged_convs = _conv_stack(
            2 * conv_channels, conv_channels, kernel_size, merged_layers, first_stride=2
        )
        self.gru = nn.GRU(conv_channels, gru_hidden, gru_layers, batch_first=True)
        self.fc = nn.Linear(gru_hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        acc = x[:, :, 0:3].transpose(1, 2)  # [N, 3, T]
        gyro = x[:, :, 3:6].transpose(1, 2)  # [N, 3, T]
        merged = torch.cat([self.acc_convs(acc), self.gyro_convs(gyro)], dim=1)  # [N, 2*64, T/2]
        merged = self.merged_convs(merged)  # [N, 64, T/4]
        outputs, _ = self.gru(merged.transpose(1, 2))  # [N, T/4, 120]
        return self.fc(outputs.mean(dim=1))
