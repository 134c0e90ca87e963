"""Reference models: plain `nn.Module`s whose widths come from config."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from hydra.utils import instantiate
from torch import nn

from deepiot.models.lenet import LeNet5, LeNet300
from deepiot.models.rnn import DeepSense, LSTMClassifier
from deepiot.models.vgg import VGG

__all__ = ["REFERENCE_MODELS", "VGG", "DeepSense", "LSTMClassifier", "LeNet5", "LeNet300", "build_model"]

# The reference models by short name, the one table of them: configs/model/<name>.yaml builds the class
# (tests/test_models.py), the env takes the name (`CompressEnv(model="lenet5")`), and a run without an experiment
# is named "<name>_<data>" (deepiot.cli.run_name).
REFERENCE_MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "lenet300": LeNet300,
    "vgg": VGG,
    "lstm": LSTMClassifier,
    "deepsense": DeepSense,
}


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its self-describing config (`_target_`, input_shape, num_classes, widths).

    `input_shape` (the per-sample input shape) is passed to the constructor only when it takes it (or
    **kwargs): a config may carry it just to describe the input.

    Raises:
        ValueError: the config has no `_target_` (the import path of the model class).
        ImportError / hydra InstantiationException: the class cannot be imported or constructed.
    """
    config = dict(model_config)
    if not isinstance(config.get("_target_"), str):
        raise ValueError(
            f"model_config needs '_target_', the import path of the model class (e.g. "
            f"'deepiot.models.LeNet5'), next to its constructor arguments; got keys {sorted(config)}."
        )
    if "input_shape" in config:
        config["input_shape"] = tuple(config["input_shape"])
        if not _takes_keyword(_locate(config["_target_"]), "input_shape"):
            del config["input_shape"]
    if isinstance(config.get("widths"), list):
        config["widths"] = tuple(config["widths"])
    return instantiate(config, _convert_="all")


def _locate(path: str) -> Any:
    """The object at import path `path` ("package.module.Class", nested classes too); ImportError otherwise."""
    parts = path.split(".")
    reason = f"No module named {parts[0]!r}"
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        try:
            found = importlib.import_module(module)
        except ImportError as error:
            reason = str(error)
            continue
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            reason = f"module {module!r} has no attribute {'.'.join(parts[split:])!r}"
            break
        return found
    raise ImportError(f"cannot import {path!r} ({reason})")


def _takes_keyword(cls: type, name: str) -> bool:
    """Whether `cls(...)` accepts keyword `name` (by name or through **kwargs)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the constructor call decide
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
