"""Bad input to the Python API, case by case: every refusal is clear, early and leaves no trace.

For each case the test asserts (1) the exception type, (2) that the message names the bad thing and says
what was expected, (3) that it came before the long work of that entry point (the compression loop,
slicing, the exporters, the env's pre-training / fine-tuning are replaced by a sentinel that fails the
test if reached), and (4) that nothing was written and no existing file was lost. No case may surface a
bare KeyError / IndexError / TypeError from deepiot's own code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import deepiot.compression.loop
import deepiot.env
import deepiot.export
import deepiot.structure.plan
from deepiot.api import OutputOptions, compress
from deepiot.checkpoint import CheckpointError
from deepiot.checks import ModelCheckError
from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.data import DatasetBundle
from deepiot.export import ExportError, export_model
from deepiot.finetune import FinetuneConfig
from deepiot.structure import SlicingPlan, Structure, StructureError, build_sliced_model
from deepiot.utils import ConfigError

SAMPLES, STEPS, CHANNELS, CLASSES = 40, 2, 6, 3
FEATURES = STEPS * CHANNELS


class LongWorkStarted(Exception):  # noqa: N818  (a sentinel, not an error of the code under test)
    """Raised by the stand-ins of each entry point's long work: the refusal came too late."""


def _long_work(*args: Any, **kwargs: Any) -> None:
    raise LongWorkStarted("the long work started before the bad input was refused")


# ---------------------------------------------------------------------------------------------- models


class MLP(nn.Module):
    """A valid classifier: [N, T, C] → logits [N, 3]; its one compressible group is fc1."""

    def __init__(self, outputs: int = CLASSES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 8)
        self.fc2 = nn.Linear(8, outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class Regressor(MLP):
    def __init__(self) -> None:
        super().__init__(outputs=1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze(1)  # [N]


class SingleLogit(MLP):
    def __init__(self) -> None:
        super().__init__(outputs=1)  # [N, 1]


class PerStep(nn.Module):
    """Sequence-to-sequence: logits per time step [N, T, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(CHANNELS, 8)
        self.fc2 = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TupleOutput(MLP):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x), x


class NoHiddenLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class BilinearMix(nn.Module):
    """An unsupported layer (nn.Bilinear) reading fc1's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 8)
        self.mix = nn.Bilinear(8, 8, 4)
        self.fc2 = nn.Linear(4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x.flatten(1))
        return self.fc2(self.mix(hidden, hidden))


class DataDependent(MLP):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) if x.sum() > 0 else super().forward(-x)


class TwoWidths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 8)
        self.fc2 = nn.Linear(8, 5)
        self.out = nn.Linear(5, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


class ResidualCumsum(nn.Module):
    """A residual stream (stem + two branches) read by an op deepiot cannot follow (cumsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(FEATURES, 8)
        self.branch1 = nn.Linear(8, 8)
        self.branch2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x.flatten(1))
        h = h + torch.relu(self.branch1(h))
        h = h + torch.relu(self.branch2(h))
        return self.out(torch.cumsum(h, dim=1))


class ProjectedLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 8, batch_first=True, proj_size=4)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


class CellStateReader(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(CHANNELS, 8, batch_first=True)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        _, (_, cell) = self.lstm(x)
        return self.fc(cell[-1])


class InitialState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(CHANNELS, 8, batch_first=True)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h0 = torch.ones(1, x.shape[0], 8)
        return self.fc(self.gru(x, h0)[0][:, -1])


class GroupedConsumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(CHANNELS, 8, 1)
        self.depthwise = nn.Conv1d(8, 8, 1, groups=8)
        self.fc = nn.Linear(8 * STEPS, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.depthwise(torch.relu(self.conv1(x.transpose(1, 2)))).flatten(1))


class WidthNet(nn.Module):
    """Needs a constructor argument: a plan without it cannot rebuild the model."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, hidden)
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


# ---------------------------------------------------------------------------------------------- helpers


class Case(NamedTuple):
    id: str
    make: Callable[..., Any]  # builds the arguments of the call under test
    error: type[Exception]
    message: str  # regex: names the bad thing and what was expected


def _inputs(seed: int = 0) -> Tensor:
    return torch.randn(SAMPLES, STEPS, CHANNELS, generator=torch.Generator().manual_seed(seed))


def _labels() -> Tensor:
    return torch.arange(SAMPLES) % CLASSES


def _dataset(inputs: Tensor | None = None, labels: Tensor | None = None) -> TensorDataset:
    return TensorDataset(_inputs() if inputs is None else inputs, _labels() if labels is None else labels)


def _assert_clear(error: BaseException, expected: type[Exception], message: str) -> None:
    """The exact type, a message matching `message`, and never a bare lookup error."""
    assert type(error) is expected, f"{type(error).__name__}: {error}"
    assert not isinstance(error, KeyError | IndexError)
    assert len(str(error)) > 30, f"too terse to act on: {error!r}"
    assert re.search(message, str(error), flags=re.S), str(error)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content (to prove nothing was written or lost)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ---------------------------------------------------------------------------------------------- compress

QUICK = CompressionConfig(
    loop=LoopConfig(max_iterations=5, batch_size=8, eval_every=5, eval_batch_size=16),
    finetune=FinetuneConfig(steps=1, batch_size=8, eval_every=1),
)

COMPRESS_CASES = [
    Case("regression-model", lambda: (Regressor(), {}), ModelCheckError, r"Regressor is not a classifier.*shape \[2\].*logits of shape \[2, classes\]"),
    Case("single-logit", lambda: (SingleLogit(), {}), ModelCheckError, r"SingleLogit returns 1 logit.*at least 2 classes"),
    Case("per-step-logits", lambda: (PerStep(), {}), ModelCheckError, r"PerStep is not a classifier.*\[2, 2, 3\].*\[2, classes\]"),
    Case("tuple-output", lambda: (TupleOutput(), {}), ModelCheckError, r"TupleOutput .*returned a tuple of 2 items.*logits of shape"),
    Case("not-a-module", lambda: ("lenet5", {}), TypeError, r"nn\.Module.*got str"),
    Case("labels-out-of-range", lambda: (MLP(), {"train_data": _dataset(labels=_labels() + 5)}), ModelCheckError, r"train labels range over \[5, 7\].*3 logits.*\[0, 2\]"),
    Case("negative-labels", lambda: (MLP(), {"val_data": _dataset(labels=_labels() - 1)}), ModelCheckError, r"val labels range over \[-1, 1\].*\[0, 2\]"),
    Case("fractional-labels", lambda: (MLP(), {"train_data": _dataset(labels=_labels() + 0.5)}), ModelCheckError, r"train labels must be integer class indices.*0\.5"),
    Case("nan-inputs", lambda: (MLP(), {"train_data": _dataset(inputs=_inputs().index_fill(0, torch.tensor([7]), math.nan))}), ModelCheckError, r"train inputs contain NaN or inf.*sample 7"),
    Case("inputs-of-wrong-shape", lambda: (MLP(), {"train_data": _dataset(inputs=torch.randn(SAMPLES, 5))}), ModelCheckError, r"MLP fails on the training inputs of shape \(2, 5\).*input shape the model takes"),
    Case("val-shape-differs", lambda: (MLP(), {"val_data": _dataset(inputs=torch.randn(SAMPLES, 1, FEATURES))}), ModelCheckError, r"val inputs have per-sample shape \(1, 12\).*training inputs have \(2, 6\)"),
    Case("example-of-wrong-shape", lambda: (MLP(), {"example_inputs": torch.randn(1, 3)}), ModelCheckError, r"MLP fails on example_inputs of shape \(1, 3\)"),
    Case("empty-train-set", lambda: (MLP(), {"train_data": TensorDataset(torch.empty(0, STEPS, CHANNELS), torch.empty(0, dtype=torch.long))}), ValueError, r"train dataset is empty.*needs train, val and test samples"),
    Case("fewer-samples-than-a-batch", lambda: (MLP(), {"train_data": _dataset(_inputs()[:5], _labels()[:5])}), ConfigError, r"5 samples, fewer than one batch.*batch_size=8"),
    Case("no-compressible-layer", lambda: (NoHiddenLayer(), {}), ValueError, r"NoHiddenLayer has no compressible group.*nothing to compress"),
    Case("unsupported-layer", lambda: (BilinearMix(), {}), StructureError, r"node 'mix' \(module 'mix' of type Bilinear\).*exclude=\['fc1'\]"),
    Case("untraceable-control-flow", lambda: (DataDependent(), {}), StructureError, r"could not trace DataDependent\.forward.*control flow"),
    Case("target-zero", lambda: (MLP(), {"target": 0.0}), ValueError, r"target_params .*must be in \(0, 1\], got 0\.0"),
    Case("target-above-one", lambda: (MLP(), {"target": 1.5}), ValueError, r"target_params .*must be in \(0, 1\], got 1\.5"),
    Case("unknown-cost", lambda: (MLP(), {"cost": "flops"}), ValueError, r"unknown cost 'flops'.*'macs'.*'params'"),
    Case("negative-lambda", lambda: (MLP(), {"lam": -1.0}), ValueError, r"critic\.lam must be >= 0.*-1\.0"),
    Case("unknown-baseline", lambda: (MLP(), {"baseline": "mean"}), ValueError, r"baseline must be one of \('ema', 'learned'\), got 'mean'"),
    Case("unknown-schedule", lambda: (MLP(), {"schedule": "fast"}), ValueError, r"schedule\.name must be one of \('paper', 'guarded'\), got 'fast'"),
    Case("zero-iterations", lambda: (MLP(), {"max_iterations": 0}), ValueError, r"max_iterations must be a positive integer, got 0"),
]  # fmt: skip


@pytest.mark.parametrize("case", COMPRESS_CASES, ids=[case.id for case in COMPRESS_CASES])
def test_compress_refuses_bad_input_early_and_writes_nothing(case: Case, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(
        deepiot.compression.loop, "build_parts", _long_work
    )  # compressor, optimisers: the loop's start
    monkeypatch.setattr(deepiot.compression.loop, "run_compression", _long_work)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("an earlier file of the user's")
    before = _snapshot(tmp_path)
    model, overrides = case.make()
    arguments = {"train_data": _dataset(), "val_data": _dataset(), "test_data": None, **overrides}
    with pytest.raises(Exception) as raised:
        compress(
            model,
            arguments.pop("train_data"),
            arguments.pop("val_data"),
            arguments.pop("test_data"),
            config=QUICK,
            out_dir=out_dir,
            progress=False,
            outputs=OutputOptions(latency_threads=None),
            **arguments,
        )
    _assert_clear(raised.value, case.error, case.message)
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- Structure.from_model

FROM_MODEL_CASES = [
    Case("exclude-unknown-name", lambda: (MLP(), {"exclude": ["fc9"]}), StructureError, r"exclude names \['fc9'\].*producers .*\['fc1', 'fc2'\]"),
    Case("exclude-as-string", lambda: (MLP(), {"exclude": "fc1"}), StructureError, r"exclude must be a list of producer names \(e\.g\. exclude=\['fc1'\]\), got str 'fc1'"),
    Case("declared-as-string", lambda: (TwoWidths(), {"declared": "fc1,fc2"}), StructureError, r"declared must be a list of producer names.*got str 'fc1,fc2'"),
    Case("declared-single-name", lambda: (TwoWidths(), {"declared": [["fc1"]]}), StructureError, r"declared must be a list of lists of at least two producer names.*\['fc1'\]"),
    Case("declared-unknown-name", lambda: (TwoWidths(), {"declared": [["fc1", "fc7"]]}), StructureError, r"names 'fc7', which is not a compressible producer; compressible producers: \['fc1', 'fc2'\]"),
    Case("declared-logit-layer", lambda: (TwoWidths(), {"declared": [["fc1", "out"]]}), StructureError, r"names 'out'.*reach the model output.*compressible producers: \['fc1', 'fc2'\]"),
    Case("declared-different-sizes", lambda: (TwoWidths(), {"declared": [["fc1", "fc2"]]}), StructureError, r"joins producers of different sizes \[8, 5\].*must pair up"),
    Case("example-of-wrong-shape", lambda: (MLP(), {"example_inputs": torch.randn(2, 5)}), StructureError, r"example inputs of shape \[\(2, 5\)\].*shape the model takes"),
    Case("example-as-list", lambda: (MLP(), {"example_inputs": [torch.randn(2, STEPS, CHANNELS)]}), StructureError, r"example_inputs must be a tensor or a tuple of tensors.*got list"),
    Case("model-not-a-module", lambda: ("MLP", {}), StructureError, r"needs an nn\.Module.*got str"),
    Case("lstm-projection", lambda: (ProjectedLSTM(), {}), StructureError, r"'lstm'.*proj_size=4 is not supported"),
    Case("lstm-cell-state-read", lambda: (CellStateReader(), {}), StructureError, r"cell state c_n.*use h_n or the output sequence"),
    Case("rnn-initial-state", lambda: (InitialState(), {}), StructureError, r"initial state hx is passed.*width would change"),
    Case("depthwise-consumer", lambda: (GroupedConsumer(), {}), StructureError, r"'depthwise'.*grouped, depthwise and transposed.*exclude=\['conv1'\]"),
    Case("merged-group-needs-exclusion", lambda: (ResidualCumsum(), {}), StructureError, r"\['branch1', 'branch2', 'stem'\] through node 'cumsum'.*exclude=\['branch1', 'branch2', 'stem'\]"),
]  # fmt: skip


@pytest.mark.parametrize("case", FROM_MODEL_CASES, ids=[case.id for case in FROM_MODEL_CASES])
def test_from_model_refuses_bad_models_and_arguments_without_touching_the_model(case: Case) -> None:
    """Discovery is itself the quick step (one trace, two forward passes); the model must come out unchanged."""
    torch.manual_seed(0)
    model, arguments = case.make()
    example = arguments.pop("example_inputs", torch.randn(2, STEPS, CHANNELS))
    state = {k: v.clone() for k, v in model.state_dict().items()} if isinstance(model, nn.Module) else None
    with pytest.raises(Exception) as raised:
        Structure.from_model(model, example, **arguments)
    _assert_clear(raised.value, case.error, case.message)
    if state is not None:
        assert model.training and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------- slicing plans


def _good_plan() -> dict[str, Any]:
    model = MLP()
    structure = Structure.from_model(model, torch.randn(2, STEPS, CHANNELS))
    config = {"_target_": f"{__name__}.MLP", "input_shape": [STEPS, CHANNELS]}
    return SlicingPlan.from_structure(structure, config, {"fc1": [0, 2, 5]}).to_dict()


def _edited(edit: Callable[[dict[str, Any]], Any]) -> Callable[[], str]:
    def make() -> str:
        payload = _good_plan()
        edit(payload)
        return json.dumps(payload)

    return make


PLAN_CASES = [
    Case("not-json", lambda: "{'format': oops", StructureError, r"cannot read slicing plan .*plan\.json"),
    Case("not-a-plan", lambda: json.dumps({"kept": {}}), StructureError, r"not a deepiot slicing plan \(expected \"format\": \"deepiot-slicing-plan\"\)"),
    Case("newer-version", _edited(lambda p: p.update(version=2)), StructureError, r"version 2 is not supported \(this deepiot reads 1\)"),
    Case("kept-missing", _edited(lambda p: p.pop("kept")), StructureError, r"lacks the object field\(s\) \['kept'\]"),
    Case("kept-not-an-object", _edited(lambda p: p.update(kept=[[0, 1]])), StructureError, r"lacks the object field\(s\) \['kept'\]"),
    Case("model-config-missing", _edited(lambda p: p.pop("model_config")), StructureError, r"lacks the object field\(s\) \['model_config'\]"),
    Case("target-missing", _edited(lambda p: p["model_config"].pop("_target_")), StructureError, r"model_config has no '_target_' \(keys: \['input_shape'\]\).*'_target_': '<package\.module\.Class>'"),
    Case("target-not-importable", _edited(lambda p: p["model_config"].update(_target_="nowhere.Net")), StructureError, r"cannot rebuild its model 'nowhere\.Net'.*No module named 'nowhere'.*OutputOptions"),
    Case("target-not-a-string", _edited(lambda p: p["model_config"].update(_target_=5)), StructureError, r"model_config\['_target_'\] must be a string import path, got 5"),
    Case("constructor-arguments-missing", _edited(lambda p: p["model_config"].update(_target_=f"{__name__}.WidthNet")), StructureError, r"WidthNet.*missing 1 required .*'hidden'.*constructor keyword arguments"),
    Case("index-out-of-range", _edited(lambda p: p["kept"].update(fc1=[0, 99])), StructureError, r"kept indices of group 'fc1' must lie in \[0, 8\), got \[0, 99\]"),
    Case("negative-index", _edited(lambda p: p["kept"].update(fc1=[-1, 2])), StructureError, r"group 'fc1' must lie in \[0, 8\), got \[-1, 2\]"),
    Case("duplicate-index", _edited(lambda p: p["kept"].update(fc1=[2, 2])), StructureError, r"group 'fc1' must be sorted and distinct, got \[2, 2\]"),
    Case("empty-kept-set", _edited(lambda p: p["kept"].update(fc1=[])), StructureError, r"group 'fc1' keeps zero elements; at least one must stay"),
    Case("float-indices", _edited(lambda p: p["kept"].update(fc1=[0.0, 1.5])), StructureError, r"kept\['fc1'\] must be a list of ints, got \[0\.0, 1\.5\]"),
    Case("indices-as-string", _edited(lambda p: p["kept"].update(fc1="0,2")), StructureError, r"kept\['fc1'\] must be a list of ints, got '0,2'"),
    Case("unknown-group", _edited(lambda p: p["kept"].update(fc9=[0])), StructureError, r"kept does not match the model's groups: unknown \['fc9'\].*the model has \['fc1'\]"),
    Case("missing-group", _edited(lambda p: p["kept"].pop("fc1")), StructureError, r"kept does not match the model's groups: unknown \[\], missing \['fc1'\]"),
    Case("size-mismatch", _edited(lambda p: p["group_sizes"].update(fc1=16)), StructureError, r"group 'fc1' has 16 elements, but the model's has 8.*different widths"),
    Case("size-as-string", _edited(lambda p: p["group_sizes"].update(fc1="8")), StructureError, r"group_sizes\['fc1'\] must be an int.*got '8'"),
]  # fmt: skip


@pytest.mark.parametrize("case", PLAN_CASES, ids=[case.id for case in PLAN_CASES])
def test_slicing_plan_refuses_bad_files_before_slicing_and_keeps_them(
    case: Case, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(deepiot.structure.plan, "slice_model", _long_work)
    path = tmp_path / "plan.json"
    path.write_text(case.make())
    before = _snapshot(tmp_path)
    with pytest.raises(Exception) as raised:
        build_sliced_model(SlicingPlan.load(path), MLP().state_dict(), torch.randn(1, STEPS, CHANNELS))
    _assert_clear(raised.value, case.error, case.message)
    assert _snapshot(tmp_path) == before


def test_state_dict_of_another_model_is_refused_naming_the_first_difference(tmp_path) -> None:
    plan = SlicingPlan.from_dict(_good_plan())
    with pytest.raises(StructureError) as raised:
        build_sliced_model(plan, TwoWidths().state_dict(), torch.randn(1, STEPS, CHANNELS))
    _assert_clear(
        raised.value, StructureError, r"fits neither the full model .*first difference.*'fc2\.bias'"
    )


# ---------------------------------------------------------------------------------------------- export_model

EXPORT_CASES = [
    Case("unknown-format", lambda: {"formats": ["tflite"]}, ExportError, r"non-empty subset of \['torchscript', 'onnx', 'executorch', 'litert'\], got \['tflite'\]"),
    Case("format-as-string", lambda: {"formats": "onnx"}, ExportError, r"formats must be a list such as \['onnx'\], got the string 'onnx'"),
    Case("no-format", lambda: {"formats": []}, ExportError, r"non-empty subset of \['torchscript', 'onnx', 'executorch', 'litert'\], got \[\]"),
    Case("unknown-exporter", lambda: {"onnx_exporter": "tvm"}, ExportError, r"onnx_exporter must be one of \['auto', 'dynamo', 'torchscript'\], got 'tvm'"),
    Case("example-as-list", lambda: {"example_inputs": [torch.randn(1, STEPS, CHANNELS)]}, ExportError, r"example inputs that are tensors with a leading batch axis.*got \['list'\]"),
    Case("example-missing", lambda: {"example_inputs": None}, ExportError, r"tensors with a leading batch axis.*got \['NoneType'\]"),
    Case("example-of-wrong-shape", lambda: {"example_inputs": torch.randn(1, 5)}, ExportError, r"MLP fails on example inputs of shape \[\(1, 5\)\].*shape the model takes"),
    Case("manifest-overrides-computed-entry", lambda: {"manifest_extra": {"cost": 1}}, ExportError, r"must not override computed manifest entries \['cost'\]"),
    Case("manifest-not-json", lambda: {"manifest_extra": {"when": object()}}, ExportError, r"manifest_extra must be JSON-serialisable.*object"),
    Case("manifest-none", lambda: {"manifest_extra": None}, ExportError, r"manifest_extra must be a dict.*got NoneType"),
    Case("extra-file-outside-folder", lambda: {"extra_files": {"../escape.txt": b""}}, ExportError, r"plain names other than .*\{'\.\./escape\.txt'\}"),
    Case("extra-file-overwrites-model", lambda: {"extra_files": {"model.onnx": b""}}, ExportError, r"plain names other than \['manifest\.json', 'model\.onnx', 'model\.pte', 'model\.tflite', 'model\.ts'\]"),
    Case("extra-file-not-bytes", lambda: {"extra_files": {"notes.txt": "text"}}, ExportError, r"map names to bytes; \['notes\.txt'\] are not bytes"),
    Case("model-not-a-module", lambda: {"model": "model.pt"}, ExportError, r"needs an nn\.Module to export, got str"),
    Case("destination-is-a-file", lambda: {"out_dir": "existing/manifest.json"}, ExportError, r"destination .*manifest\.json exists and is not a folder"),
]  # fmt: skip


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[case.id for case in EXPORT_CASES])
def test_export_refuses_bad_arguments_before_exporting_and_keeps_the_earlier_export(
    case: Case, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(deepiot.export, "_write_formats", _long_work)  # TorchScript trace + ONNX export
    earlier = tmp_path / "existing"
    earlier.mkdir()
    for name in ("model.ts", "model.onnx", "manifest.json"):
        (earlier / name).write_bytes(f"earlier {name}".encode())
    before = _snapshot(tmp_path)
    arguments = {"model": MLP(), "example_inputs": torch.randn(1, STEPS, CHANNELS), "out_dir": "existing"}
    arguments.update({"manifest_extra": {}, **case.make()})
    arguments["out_dir"] = tmp_path / arguments["out_dir"]
    with pytest.raises(Exception) as raised:
        export_model(
            arguments.pop("model"), arguments.pop("example_inputs"), arguments.pop("out_dir"), **arguments
        )
    _assert_clear(raised.value, case.error, case.message)
    assert _snapshot(tmp_path) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------- gymnasium env


def _bundle() -> DatasetBundle:
    def split(seed: int) -> TensorDataset:
        return TensorDataset(_inputs(seed), _labels())

    return DatasetBundle("tiny", split(0), split(1), split(2), (STEPS, CHANNELS), CLASSES, ["a", "b", "c"])


ENV_CASES = [
    Case("unknown-model-name", lambda: {"model": "resnet"}, ValueError, r"unknown model 'resnet'; expected one of \['deepsense', 'lenet300'"),
    Case("model-of-wrong-type", lambda: {"model": 3}, TypeError, r"model must be a name, an nn\.Module or None, got int"),
    Case("unknown-data-name", lambda: {"data": "imagenet"}, ValueError, r"unknown data 'imagenet'; expected one of \['mnist'"),
    Case("data-of-wrong-type", lambda: {"data": [1, 2]}, TypeError, r"data must be a name, a DatasetBundle or None, got list"),
    Case("unknown-cost", lambda: {"cost": "joules"}, ValueError, r"unknown cost 'joules'; registered cost functions: \['activation_bytes'"),
    Case("negative-lambda", lambda: {"lam": -0.5}, ValueError, r"lam \(weight of the cost ratio in the reward\) must be >= 0.*-0\.5"),
    Case("lambda-as-string", lambda: {"lam": "1"}, ValueError, r"lam .*must be >= 0 \(a number\), got '1'"),
    Case("zero-data-limit", lambda: {"data_limit": 0}, ValueError, r"data_limit must be an integer >= 1, got 0"),
    Case("negative-finetune-steps", lambda: {"finetune_steps": -1}, ValueError, r"finetune_steps must be an integer >= 0, got -1"),
    Case("fractional-eval-samples", lambda: {"eval_samples": 1.5}, ValueError, r"eval_samples must be an integer >= 1, got 1\.5"),
    Case("zero-min-keep", lambda: {"min_keep": 0.0}, ValueError, r"min_keep \(smallest keep ratio\) must be a number in \(0, 1\], got 0\.0"),
    Case("min-keep-as-string", lambda: {"min_keep": "a"}, ValueError, r"min_keep .*must be a number in \(0, 1\], got 'a'"),
    Case("unknown-render-mode", lambda: {"render_mode": "human"}, ValueError, r"render_mode must be None or 'ansi', got 'human'"),
    Case("model-and-checkpoint", lambda: {"checkpoint": "model.pt"}, ValueError, r"pass either model or checkpoint, not both"),
    Case("missing-checkpoint", lambda: {"model": None, "checkpoint": "missing/model.pt"}, CheckpointError, r"checkpoint file missing/model\.pt does not exist.*written by deepiot"),
    Case("regression-model", lambda: {"model": Regressor()}, ModelCheckError, r"Regressor is not a classifier.*logits of shape \[2, classes\]"),
    Case("model-for-other-inputs", lambda: {"model": PerStep(), "data": _bundle_of_shape((FEATURES,))}, ModelCheckError, r"PerStep fails on the 'tiny' training inputs of shape \(2, 12\)"),
    Case("classes-differ", lambda: {"model": MLP(outputs=5)}, ModelCheckError, r"returns 5 logits, but dataset 'tiny' has 3 classes"),
    Case("no-compressible-layer", lambda: {"model": NoHiddenLayer()}, ValueError, r"NoHiddenLayer has no compressible group.*nothing to compress"),
]  # fmt: skip


def _bundle_of_shape(shape: tuple[int, ...]) -> DatasetBundle:
    def split(seed: int) -> TensorDataset:
        return TensorDataset(
            torch.randn(SAMPLES, *shape, generator=torch.Generator().manual_seed(seed)), _labels()
        )

    return DatasetBundle("tiny", split(0), split(1), split(2), shape, CLASSES, ["a", "b", "c"])


@pytest.fixture
def no_env_training(monkeypatch) -> None:
    """The env's long work — pre-training a named model, loading a named dataset — must not start."""
    monkeypatch.setattr(deepiot.env, "pretrained_state", _long_work)
    monkeypatch.setattr(deepiot.env, "cached_pretrained_state", _long_work)
    monkeypatch.setattr(deepiot.env, "load_dataset", _long_work)
    monkeypatch.setattr(deepiot.env, "train_steps", _long_work)


@pytest.mark.parametrize("case", ENV_CASES, ids=[case.id for case in ENV_CASES])
def test_env_refuses_bad_keyword_arguments_before_training(
    case: Case, tmp_path, monkeypatch, no_env_training
) -> None:
    monkeypatch.chdir(tmp_path)
    arguments = {"model": MLP(), "data": _bundle(), **case.make()}
    with pytest.raises(Exception) as raised:
        gymnasium.make("deepiot/Compress-v0", **arguments)
    _assert_clear(raised.value, case.error, case.message)
    assert list(tmp_path.iterdir()) == []


BAD_ACTIONS = {
    "above-the-space": np.array([1.5], dtype=np.float32),
    "below-the-space": np.array([-0.25], dtype=np.float32),
    "nan": np.array([math.nan], dtype=np.float32),
    "infinite": np.array([math.inf], dtype=np.float32),
    "two-ratios": np.array([0.5, 0.5], dtype=np.float32),
    "a-string": "half",
    "none": None,
}


@pytest.mark.parametrize("action", list(BAD_ACTIONS.values()), ids=list(BAD_ACTIONS))
def test_env_refuses_actions_outside_the_space_without_advancing(
    action, monkeypatch, no_env_training
) -> None:
    env = gymnasium.make("deepiot/Compress-v0", model=MLP(), data=_bundle(), finetune_steps=1, eval_samples=8)
    monkeypatch.setattr(env.unwrapped, "_judge_structure", _long_work)  # fine-tuning + evaluation
    env.reset(seed=0)
    with pytest.raises(ValueError) as raised:
        env.unwrapped.step(action)
    _assert_clear(
        raised.value, ValueError, r"action must be one finite keep ratio in the action space \[0, 1\].*got"
    )
    assert env.unwrapped._kept == {}  # the episode did not advance: the same group awaits a valid action


def test_env_step_before_reset_says_to_reset(no_env_training) -> None:
    env = gymnasium.make("deepiot/Compress-v0", model=MLP(), data=_bundle(), finetune_steps=1, eval_samples=8)
    with pytest.raises(RuntimeError) as raised:
        env.unwrapped.step(np.array([0.5], dtype=np.float32))
    _assert_clear(
        raised.value, RuntimeError, r"call reset\(\) first \(the episode has not started or has ended\)"
    )
