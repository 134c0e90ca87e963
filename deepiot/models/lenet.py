"""LeNet-5 and LeNet-300-100 as in the Caffe / Han et al. (2015) MNIST benchmarks."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5x5 → max-pool → conv 50@5x5 → max-pool → fc 500 → fc classes.

    With the default widths on 1×28×28 inputs it has 431,080 parameters.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        conv1_channels: int = 20,
        conv2_channels: int = 50,
        fc_features: int = 500,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.conv1 = nn.Conv2d(in_channels, conv1_channels, kernel_size=5)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        flat_height, flat_width = (height - 4) // 2 - 4, (width - 4) // 2 - 4
        self.fc1 = nn.Linear(conv2_channels * (flat_height // 2) * (flat_width // 2), fc_features)
        self.fc2 = nn.Linear(fc_features, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.conv1(x)))  # [N, 20, 12, 12]
        x = self.pool(self.relu(self.conv2(x)))  # [N, 50, 4, 4]
        x = self.relu(self.fc1(x.flatten(1)))  # [N, 500]
        return self.fc2(x)


class LeNet300(nn.Module):
    """LeNet-300-100 multilayer perceptron (266,610 parameters on 28×28 inputs)."""

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        hidden1: int = 300,
        hidden2: int = 100,
    ) -> None:
        super().__init__()
        in_features = 1
        for size in input_shape:
            in_features *= size
        self.fc1 = nn.Linear(in_features, hidden1)
        self.fc2 = nn.Linear(hidden1, hidden2)
        self.fc3 = nn.Linear(hidden2, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.fc1(x.flatten(1)))  # [N, 300]
        x = self.relu(self.fc2(x))  # [N, 100]
        return self.fc3(x)
