"""Reference models: plain `nn.Module`s whose widths come from config."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from torch import nn

from deepiot.models.lenet import LeNet5, LeNet300
from deepiot.models.rnn import DeepSense, LSTMClassifier
from deepiot.models.vgg import VGG

__all__ = ["VGG", "DeepSense", "LSTMClassifier", "LeNet5", "LeNet300", "build_model"]


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its self-describing config (`_target_`, input_shape, num_classes, widths)."""
    config = dict(model_config)
    config["input_shape"] = tuple(config["input_shape"])
    if isinstance(config.get("widths"), list):
        config["widths"] = tuple(config["widths"])
    return instantiate(config, _convert_="all")
