"""The one container every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import TensorDataset


@dataclass
class DatasetBundle:
    """Train/val/test splits of one task, already normalised, plus what a model and an exporter need to know.

    Tensors: inputs float32, labels int64 in [0, num_classes).
    Layouts: images [N, C, H, W]; sensor windows [N, T, C] (time first, channels last).
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28) or (128, 6)
    num_classes: int
    class_names: list[str]
    # per-channel statistics computed on the training split only and already applied: x_norm = (x - mean) / std
    normalization: dict[str, list[float]] = field(default_factory=lambda: {"mean": [], "std": []})
    channel_axis: int = 0  # axis of input_shape the statistics apply to (0 for [C,H,W], -1 for [T,C])
    source: str = ""  # file or directory the data came from

    def describe(self) -> dict[str, Any]:
        """The dataset in plain values (name, shapes, classes, normalisation), as checkpoints and manifests keep it."""
        return {
            "name": self.name,
            "input_shape": [int(size) for size in self.input_shape],
            "num_classes": int(self.num_classes),
            "class_names": [str(name) for name in self.class_names],
            "normalization": {key: [float(v) for v in values] for key, values in self.normalization.items()},
            "channel_axis": int(self.channel_axis),
        }
