"""The profiling suite: single layers at many shapes and randomly sliced reference models, with features.

`build_suite` draws the configurations; `write_onnx_suite` exports each one to ONNX (batch 1, static
shapes) with a `suite.json` that `ort_profile.py` times anywhere and `deepiot.device.profile` fits from.
Layer entries carry their features (`layer_features`); model entries carry one feature row per layer, so
the fit never needs the models again.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepiot.device.layers import LayerSpec, features_at, layer_features, layer_inventory
from deepiot.device.ort_profile import SUITE_NAME
from deepiot.device.profile import REFERENCE_ARCHITECTURES
from deepiot.structure import Structure, slice_model
from deepiot.structure.cost import LinearForm

LAYER_KINDS = ("linear", "conv1d", "conv2d", "lstm", "gru")


@dataclass
class SuiteEntry:
    """One timed configuration: a module, its batch-1 input and its layers' features."""

    id: str
    kind: str  # a layer kind, or "model"
    module: nn.Module
    inputs: tuple[Tensor, ...]
    layers: list[dict[str, Any]]  # [{"name", "kind", "features"}], one per layer (one for a layer entry)
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        shapes = [list(value.shape) for value in self.inputs]
        return {
            "id": self.id,
            "kind": self.kind,
            "file": f"{self.id}.onnx",
            "input_shapes": shapes,
            "layers": self.layers,
            **self.info,
        }


class RecurrentLayer(nn.Module):
    """One LSTM/GRU layer returning only its output sequence [N, T, D·H]."""

    def __init__(self, kind: str, in_width: int, hidden: int) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(in_width, hidden, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


def _log_int(rng: np.random.Generator, low: int, high: int) -> int:
    return int(round(float(np.exp(rng.uniform(np.log(low), np.log(high))))))


def _fixed(width: int) -> LinearForm:
    return LinearForm(width, ())


def _layer_entry(index: int, spec: LayerSpec, module: nn.Module, inputs: tuple[Tensor, ...]) -> SuiteEntry:
    in_width, out_width = spec.in_width.constant, spec.out_width.constant
    row = {"name": spec.name, "kind": spec.kind, "features": layer_features(spec, in_width, out_width)}
    geometry = {"in": in_width, "out": out_width, "positions": spec.positions, "kernel": spec.kernel}
    return SuiteEntry(f"{spec.kind}_{index:03d}", spec.kind, module, inputs, [row], {"geometry": geometry})


def layer_entries(
    rng: np.random.Generator, per_kind: int, kinds: Collection[str] = LAYER_KINDS
) -> Iterator[SuiteEntry]:
    """`per_kind` random configurations of each layer kind in `kinds`, spanning the reference models' shapes."""
    for index in range(per_kind if "linear" in kinds else 0):
        width_in, width_out = _log_int(rng, 4, 3000), _log_int(rng, 2, 800)
        spec = LayerSpec("linear", "linear", _fixed(width_in), _fixed(width_out), 1, 1)
        yield _layer_entry(index, spec, nn.Linear(width_in, width_out), (torch.randn(1, width_in),))
    for index in range(per_kind if "conv1d" in kinds else 0):
        width_in, width_out, length = _log_int(rng, 1, 140), _log_int(rng, 1, 80), _log_int(rng, 16, 130)
        kernel, stride = int(rng.choice([3, 5])), int(rng.choice([1, 2]))
        conv = nn.Conv1d(width_in, width_out, kernel, stride=stride, padding=kernel // 2)
        module = nn.Sequential(conv, nn.BatchNorm1d(width_out), nn.ReLU())
        out_length = (length + 2 * (kernel // 2) - kernel) // stride + 1
        spec = LayerSpec(
            "conv", "conv1d", _fixed(width_in), _fixed(width_out), out_length, length, kernel, batchnorm=True
        )
        yield _layer_entry(index, spec, module, (torch.randn(1, width_in, length),))
    for index in range(per_kind if "conv2d" in kinds else 0):
        width_in, width_out, side = _log_int(rng, 1, 32), _log_int(rng, 1, 64), _log_int(rng, 8, 30)
        kernel = int(rng.choice([3, 5]))
        module = nn.Sequential(nn.Conv2d(width_in, width_out, kernel), nn.ReLU())
        out_side = side - kernel + 1
        spec = LayerSpec(
            "conv", "conv2d", _fixed(width_in), _fixed(width_out), out_side**2, side**2, kernel**2
        )
        yield _layer_entry(index, spec, module, (torch.randn(1, width_in, side, side),))
    for kind in ("lstm", "gru"):
        for index in range(per_kind if kind in kinds else 0):
            width_in, hidden, steps = _log_int(rng, 1, 140), _log_int(rng, 1, 160), _log_int(rng, 8, 130)
            spec = LayerSpec("rnn", kind, _fixed(width_in), _fixed(hidden), steps, steps)
            module = RecurrentLayer(kind, width_in, hidden)
            yield _layer_entry(index, spec, module, (torch.randn(1, steps, width_in),))


def isolated_layer(
    spec: LayerSpec, original: nn.Module, in_width: int, out_width: int
) -> tuple[nn.Module, Tensor]:
    """A stand-alone copy of one layer of a reference model at the given widths (conv: with its BN + ReLU)."""
    if spec.kind == "linear":
        shape = (1, in_width) if spec.positions == 1 else (1, spec.positions, in_width)
        return nn.Linear(in_width, out_width), torch.randn(*shape)
    if spec.kind in ("lstm", "gru"):
        return RecurrentLayer(spec.kind, in_width, out_width), torch.randn(1, spec.positions, in_width)
    conv = type(original)(
        in_width, out_width, original.kernel_size, stride=original.stride, padding=original.padding
    )
    norm = (nn.BatchNorm1d if spec.kind == "conv1d" else nn.BatchNorm2d)(out_width)
    module = nn.Sequential(conv, norm, nn.ReLU()) if spec.batchnorm else nn.Sequential(conv, nn.ReLU())
    return module, torch.randn(1, in_width, *spec.in_spatial)


def reference_layer_entries(
    rng: np.random.Generator, per_model: int, architectures: Collection[str]
) -> Iterator[SuiteEntry]:
    """Every layer of `per_model` random slicings of each reference model in `architectures`, timed on its own.

    These put profiling points where compression actually goes (e.g. LeNet-5's conv2 at 12×12 input with
    many channels), which random shapes cover only thinly.
    """
    index = 0
    for build, example in reference_models(architectures).values():
        model = build().eval()
        structure = Structure.from_model(model, example)
        for spec in layer_inventory(model, structure):
            for _ in range(per_model):
                counts = {name: len(kept) for name, kept in random_kept(rng, structure, full=False).items()}
                in_width, out_width = int(spec.in_width.value(counts)), int(spec.out_width.value(counts))
                original = model.get_submodule(spec.name) if spec.kind.startswith("conv") else None
                module, example_input = isolated_layer(spec, original, in_width, out_width)
                fixed = LayerSpec(
                    spec.name,
                    spec.kind,
                    _fixed(in_width),
                    _fixed(out_width),
                    spec.positions,
                    spec.in_positions,
                    spec.kernel,
                    spec.directions,
                    spec.batchnorm,
                    spec.in_spatial,
                )
                entry = _layer_entry(index, fixed, module, (example_input,))
                entry.id = f"ref_{entry.id}"
                index += 1
                yield entry


def reference_models(
    architectures: Collection[str] = REFERENCE_ARCHITECTURES,
) -> dict[str, tuple[Callable[[], nn.Module], Tensor]]:
    """The reference architectures deepiot compresses (default widths) and a batch-2 example input."""
    from deepiot.models import DeepSense, LeNet5, LSTMClassifier

    models = {
        "lenet5": (LeNet5, torch.randn(2, 1, 28, 28)),
        "deepsense": (DeepSense, torch.randn(2, 128, 6)),
        "lstm": (LSTMClassifier, torch.randn(2, 128, 6)),
    }
    return {name: models[name] for name in REFERENCE_ARCHITECTURES if name in architectures}


def architecture_kinds(architectures: Collection[str]) -> set[str]:
    """The layer kinds the reference models in `architectures` are made of (lenet5: conv2d and linear)."""
    kinds = set()
    for build, example in reference_models(architectures).values():
        model = build().eval()
        kinds |= {spec.kind for spec in layer_inventory(model, Structure.from_model(model, example))}
    return kinds


def random_kept(rng: np.random.Generator, structure: Structure, full: bool) -> dict[str, list[int]]:
    """A random kept set: a common level in [2%, 100%] (log-uniform), jittered per group."""
    level = float(np.exp(rng.uniform(np.log(0.02), 0.0)))
    kept = {}
    for group in structure.groups:
        fraction = 1.0 if full else min(1.0, level * float(np.exp(rng.normal(0.0, 0.4))))
        count = max(1, int(round(fraction * group.size)))
        kept[group.name] = sorted(rng.choice(group.size, size=count, replace=False).tolist())
    return kept


def model_entries(
    rng: np.random.Generator, per_model: int, architectures: Collection[str]
) -> Iterator[SuiteEntry]:
    """`per_model` slicings of every reference model in `architectures` (the first keeps everything)."""
    for architecture, (build, example) in reference_models(architectures).items():
        model = build().eval()
        structure = Structure.from_model(model, example)
        inventory = layer_inventory(model, structure)
        for index in range(per_model):
            kept = random_kept(rng, structure, full=index == 0)
            counts = {name: len(indices) for name, indices in kept.items()}
            sliced = slice_model(model, structure, kept, verify=False).eval()
            rows = [
                {"name": spec.name, "kind": spec.kind, "features": features_at(spec, counts)}
                for spec in inventory
            ]
            info = {"architecture": architecture, "kept_counts": counts}
            yield SuiteEntry(f"model_{architecture}_{index:03d}", "model", sliced, (example[:1],), rows, info)


def build_suite(
    seed: int = 0,
    per_kind: int = 60,
    per_model: int = 12,
    per_reference_layer: int = 4,
    architectures: Collection[str] = REFERENCE_ARCHITECTURES,
) -> list[SuiteEntry]:
    """Layer configurations (random shapes of the layer kinds `architectures` use, and their layers at random
    widths) and sliced reference models of `architectures`, drawn reproducibly from `seed` (the sliced models
    from their own stream)."""
    torch.manual_seed(seed)
    layer_rng, model_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    layers = [
        *layer_entries(layer_rng, per_kind, architecture_kinds(architectures)),
        *reference_layer_entries(layer_rng, per_reference_layer, architectures),
    ]
    return [*layers, *model_entries(model_rng, per_model, architectures)]


def export_onnx(module: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    """Batch-1, static-shape ONNX (TorchScript-based exporter: fast, and it handles LSTM/GRU)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, str(path), dynamo=False, input_names=["input"])


def write_onnx_suite(entries: list[SuiteEntry], out_dir: str | Path, settings: dict[str, Any]) -> Path:
    """Export every entry to `<out_dir>/<id>.onnx` and describe them all in `<out_dir>/suite.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        export_onnx(entry.module, entry.inputs, out_dir / f"{entry.id}.onnx")
    document = {"settings": settings, "entries": [entry.describe() for entry in entries]}
    (out_dir / SUITE_NAME).write_text(json.dumps(document, indent=1))
    return out_dir / SUITE_NAME
