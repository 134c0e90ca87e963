"""A VGG-style CNN for 32×32×3 images (the paper's CIFAR-10 task)."""

from __future__ import annotations

from torch import Tensor, nn


class VGG(nn.Module):
    """VGG-style network: blocks of conv3×3→BN→ReLU separated by 2×2 max-pools, then a 2-layer classifier.

    Args:
        widths: conv widths; the string "M" places a max-pool.
        classifier_features: width of the hidden fully-connected layer.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 10,
        widths: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, "M"),
        classifier_features: int = 512,
    ) -> None:
        super().__init__()
        in_channels = input_shape[0]
        layers: list[nn.Module] = []
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [
                nn.Conv2d(in_channels, int(width), 3, padding=1),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(),
            ]
            in_channels = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, classifier_features),
            nn.ReLU(),
            nn.Linear(classifier_features, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)  # [N, C_last]
        return self.classifier(x)
