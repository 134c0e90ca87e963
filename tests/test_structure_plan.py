"""Slicing plans: JSON round trip rebuilds an identical sliced model; bad plans fail with clear messages."""

from __future__ import annotations

import json

import pytest
import torch

from deepiot.models import build_model
from deepiot.structure import SlicingPlan, Structure, StructureError, build_sliced_model, slice_model

CONFIGS = {
    "lenet5": ({"_target_": "deepiot.models.LeNet5", "conv1_channels": 4, "conv2_channels": 6,
                "fc_features": 10, "input_shape": [1, 28, 28], "num_classes": 10}, (1, 28, 28)),
    "deepsense": ({"_target_": "deepiot.models.DeepSense", "conv_channels": 6, "gru_hidden": 5,
                   "sensor_layers": 1, "merged_layers": 1, "input_shape": [32, 6], "num_classes": 4}, (32, 6)),
}  # fmt: skip


def _trained(name: str) -> tuple[dict, torch.nn.Module, torch.Tensor, Structure]:
    config, shape = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model(config).eval()
    example = torch.randn(2, *shape)
    return config, model, example, Structure.from_model(model, example)


def _plan(name: str) -> tuple[SlicingPlan, torch.nn.Module, torch.Tensor, Structure]:
    config, model, example, structure = _trained(name)
    kept = {g.name: list(range(0, g.size, 2)) for g in structure.groups}
    return SlicingPlan.from_structure(structure, config, kept), model, example, structure


@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_plan_rebuilds_an_identical_sliced_model(name, tmp_path):
    plan, model, example, structure = _plan(name)
    plan.save(tmp_path / "plan.json")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind
    loaded = SlicingPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    expected = slice_model(model, structure, plan.kept).eval()
    x = torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        from_full = build_sliced_model(loaded, model.state_dict(), example)
        assert torch.equal(from_full(x), expected(x))
        from_sliced = build_sliced_model(loaded, expected.state_dict(), example)
        assert torch.equal(from_sliced(x), expected(x))
    assert not from_full.training


def test_plan_json_has_format_version_and_fields(tmp_path):
    plan, *_ = _plan("lenet5")
    plan.save(tmp_path / "plan.json")
    payload = json.loads((tmp_path / "plan.json").read_text())
    assert payload["format"] == "deepiot-slicing-plan" and payload["version"] == 1
    assert payload["group_sizes"] == {"conv1": 4, "conv2": 6, "fc1": 10}
    assert payload["kept"]["conv2"] == [0, 2, 4]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.kept.update(conv9=[0]), r"kept does not match the model's groups: unknown \['conv9'\]"),
        (lambda p: p.kept.pop("fc1"), r"missing \['fc1'\]"),
        (lambda p: p.group_sizes.update(conv1=5), "says group 'conv1' has 5 elements, but the model's has 4"),
        (lambda p: p.kept.update(conv1=[0, 4]), r"must lie in \[0, 4\)"),
        (lambda p: p.kept.update(conv1=[1, 1]), "sorted and distinct"),
        (lambda p: p.kept.update(conv1=[2, 1]), "sorted and distinct"),
        (lambda p: p.kept.update(conv1=[]), "keeps zero elements"),
        (lambda p: p.kept.update(conv1=[0.0, 1.0]), "must be a list of ints"),
    ],
)
def test_bad_plans_are_rejected(change, message):
    plan, _, _, structure = _plan("lenet5")
    change(plan)
    with pytest.raises(StructureError, match=message):
        plan.validate(structure)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"format": "other"}, "not a deepiot slicing plan"),
        ({"format": "deepiot-slicing-plan", "version": 7}, "version 7 is not supported"),
        ({"format": "deepiot-slicing-plan", "version": 1, "kept": {}}, r"lacks the object field\(s\)"),
    ],
)
def test_bad_plan_files_are_rejected(payload, message, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(StructureError, match=message):
        SlicingPlan.load(path)


def test_unreadable_plan_file_is_rejected(tmp_path):
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(StructureError, match="cannot read slicing plan"):
        SlicingPlan.load(tmp_path / "plan.json")


def test_state_dict_of_another_shape_is_rejected():
    plan, model, example, _ = _plan("lenet5")
    state = dict(model.state_dict())
    state["fc1.bias"] = torch.zeros(3)
    with pytest.raises(StructureError, match="'fc1.bias'"):
        build_sliced_model(plan, state, example)
