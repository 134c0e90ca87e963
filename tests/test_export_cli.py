from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import CheckpointError, save_checkpoint
from deepiot.cli import CONFIG_DIR
from deepiot.cli.export import run_export
from deepiot.export import ExportError, export_compressed
from deepiot.models import build_model
from deepiot.structure import SlicingPlan, Structure, StructureError, slice_model

MODEL_CONFIG = {
    "_target_": "deepiot.models.LSTMClassifier",
    "hidden_size": 8,
    "num_layers": 2,
    "bidirectional": False,
    "input_shape": [16, 6],
    "num_classes": 3,
}
DATA = {
    "name": "toy_imu",
    "input_shape": [16, 6],
    "num_classes": 3,
    "class_names": ["walk", "sit", "lie"],
    "normalization": {"mean": [0.1] * 6, "std": [2.0] * 6},
    "channel_axis": -1,
}


@pytest.fixture
def trained_checkpoint(tmp_path):
    """A tiny "trained_model" checkpoint written by deepiot.checkpoint.save_checkpoint."""
    torch.manual_seed(0)
    model = build_model(MODEL_CONFIG)
    path = tmp_path / "run" / "model.pt"
    payload = {
        "kind": "trained_model",
        "model_config": MODEL_CONFIG,
        "state_dict": model.state_dict(),
        "metrics": {"test_accuracy": 0.75, "val_accuracy": 0.8},
        "config": {},
        "data": DATA,
    }
    save_checkpoint(payload, path)
    return path


def load_original(checkpoint_path) -> torch.nn.Module:
    model = build_model(MODEL_CONFIG)
    model.load_state_dict(torch.load(checkpoint_path, weights_only=True)["state_dict"])
    return model.eval()


def save_plan(model: torch.nn.Module, model_config: dict, path) -> dict[str, list[int]]:
    """Keep every other element of each group (a different count per LSTM layer would also do)."""
    structure = Structure.from_model(model, torch.randn(1, 16, 6))
    kept = {group.name: list(range(0, group.size, 2)) for group in structure.groups}
    SlicingPlan.from_structure(structure, model_config, kept).save(path)
    return kept


def compose_export(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="export", overrides=overrides)


def test_export_without_plan_keeps_the_model_and_describes_the_data(trained_checkpoint):
    result = export_compressed(trained_checkpoint, None, onnx_exporter="torchscript")
    out_dir = trained_checkpoint.parent / "export"  # the default destination
    assert result.paths["manifest"] == out_dir / "manifest.json"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["input_layout"] == "NTC"
    assert manifest["normalization"] == {**DATA["normalization"], "channel_axis": -1}
    assert manifest["class_names"] == DATA["class_names"]
    assert manifest["metrics"] == {"test_accuracy": 0.75, "val_accuracy": 0.8}
    assert manifest["slicing_plan"] is None
    model = load_original(trained_checkpoint)
    assert manifest["cost"]["params"] == sum(parameter.numel() for parameter in model.parameters())
    inputs = torch.randn(2, 16, 6)
    exported = torch.jit.load(str(result.paths["torchscript"]))
    assert torch.allclose(exported(inputs), model.eval()(inputs), atol=1e-6)


def test_export_with_plan_writes_the_sliced_model_and_its_plan(trained_checkpoint, tmp_path):
    original = load_original(trained_checkpoint)
    plan_path = tmp_path / "slicing_plan.json"
    kept = save_plan(original, MODEL_CONFIG, plan_path)
    result = export_compressed(trained_checkpoint, plan_path, tmp_path / "out", onnx_exporter="torchscript")
    assert result.paths["slicing_plan"].read_bytes() == plan_path.read_bytes()
    manifest = json.loads(result.paths["manifest"].read_text())
    assert manifest["slicing_plan"] == "slicing_plan.json"
    sliced = slice_model(original, Structure.from_model(original, torch.randn(1, 16, 6)), kept)
    assert manifest["cost"]["params"] == sum(parameter.numel() for parameter in sliced.parameters())
    assert manifest["cost"]["params"] < sum(parameter.numel() for parameter in original.parameters())
    inputs = torch.randn(3, 16, 6)
    exported = torch.jit.load(str(result.paths["torchscript"]))
    assert torch.allclose(exported(inputs), sliced.eval()(inputs), atol=1e-6)


def test_plan_for_another_model_is_refused_before_writing(trained_checkpoint, tmp_path):
    other_config = {**MODEL_CONFIG, "hidden_size": 12}
    plan_path = tmp_path / "other_plan.json"
    save_plan(build_model(other_config), other_config, plan_path)
    with pytest.raises(ExportError, match=r"a plan for another model.*hidden_size: 8 → 12"):
        export_compressed(trained_checkpoint, plan_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_plan_with_foreign_groups_is_refused(trained_checkpoint, tmp_path):
    plan_path = tmp_path / "slicing_plan.json"
    save_plan(load_original(trained_checkpoint), MODEL_CONFIG, plan_path)
    document = json.loads(plan_path.read_text())
    document["kept"]["conv1"] = [0]  # a group the LSTM classifier does not have
    document["group_sizes"]["conv1"] = 4
    plan_path.write_text(json.dumps(document))
    with pytest.raises(StructureError, match="does not match the model's groups"):
        export_compressed(trained_checkpoint, plan_path, tmp_path / "out")


def test_run_export_from_composed_config(trained_checkpoint, tmp_path):
    cfg = compose_export(
        [
            f"checkpoint={trained_checkpoint}",
            f"out_dir={tmp_path / 'out'}",
            "formats=[onnx]",
            "onnx_exporter=torchscript",
        ]
    )
    result = run_export(cfg)
    assert set(result.paths) == {"onnx", "manifest"}
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_run_export_requires_a_checkpoint():
    with pytest.raises(ExportError, match="needs checkpoint="):
        run_export(compose_export([]))


def test_missing_checkpoint_fails_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_compressed(tmp_path / "nope.pt", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint_is_refused(trained_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pt"
    content = trained_checkpoint.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        export_compressed(truncated, None, tmp_path / "out")


def test_plain_state_dict_is_not_ours(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model(MODEL_CONFIG).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a deepiot checkpoint"):
        export_compressed(path, None, tmp_path / "out")


def test_command_line(trained_checkpoint, tmp_path):
    command = [sys.executable, "-m", "deepiot.cli.export", "onnx_exporter=torchscript"]
    out_dir = tmp_path / "cli_export"
    completed = subprocess.run(
        [*command, f"checkpoint={trained_checkpoint}", f"out_dir={out_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "max |exported - PyTorch|" in completed.stdout
    assert sorted(path.name for path in out_dir.iterdir()) == ["manifest.json", "model.onnx", "model.ts"]
    failed = subprocess.run(
        [*command, f"checkpoint={tmp_path / 'missing.pt'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert "missing.pt does not exist" in failed.stderr


def write_sliced_checkpoint(trained_checkpoint, folder):
    """A "sliced_model" checkpoint (as deepiot-compress's finetuned_model.pt) and its slicing_plan.json."""
    from deepiot.export import SLICED_MODEL_KIND
    from deepiot.structure import build_sliced_model

    original = load_original(trained_checkpoint)
    plan_path = folder / "slicing_plan.json"
    save_plan(original, MODEL_CONFIG, plan_path)
    plan = SlicingPlan.load(plan_path)
    sliced = build_sliced_model(plan, original.state_dict(), torch.randn(1, 16, 6))
    payload = {
        "kind": SLICED_MODEL_KIND,
        "slicing_plan": plan.to_dict(),
        "model_config": MODEL_CONFIG,
        "state_dict": sliced.state_dict(),
        "metrics": {"test_accuracy": 0.7, "val_accuracy": 0.7},
        "config": {},
        "data": DATA,
    }
    save_checkpoint(payload, folder / "finetuned_model.pt")
    return folder / "finetuned_model.pt", plan_path


def changed_plan(plan_path, folder, change):
    document = json.loads(plan_path.read_text())
    change(document)
    path = folder / "changed_plan.json"
    path.write_text(json.dumps(document))
    return path


def first_group(document):
    return sorted(document["kept"])[0]


PLAN_DEFECTS = {
    "out of range": (lambda d: d["kept"][first_group(d)].append(999), "999"),
    "duplicate": (
        lambda d: d["kept"][first_group(d)].insert(0, 0),
        "must be sorted and distinct, got \\[0, 0, 2",
    ),
    "negative": (lambda d: d["kept"][first_group(d)].insert(0, -1), "-1"),
    "float": (lambda d: d["kept"][first_group(d)].append(1.5), "must be a list of ints"),
    "empty group": (lambda d: d["kept"].update({first_group(d): []}), "empty|at least one"),
    "group size": (
        lambda d: d["group_sizes"].update({first_group(d): d["group_sizes"][first_group(d)] + 10}),
        r"slicing plan says group .* has \d+ elements, but the model's has",
    ),
}


@pytest.mark.parametrize("defect", list(PLAN_DEFECTS))
def test_a_defective_plan_with_a_sliced_checkpoint_is_named_like_with_the_original(
    trained_checkpoint, tmp_path, defect
):
    """The plan's own defect is named (as with the full-size original), not "not the plan it was sliced with"."""
    change, pattern = PLAN_DEFECTS[defect]
    checkpoint, plan_path = write_sliced_checkpoint(trained_checkpoint, tmp_path)
    plan = changed_plan(plan_path, tmp_path, change)
    for source in (trained_checkpoint, checkpoint):
        with pytest.raises((StructureError, ExportError), match=pattern) as refused:
            export_compressed(source, plan, tmp_path / "out")
        assert "is not the plan" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_sliced_checkpoint_refuses_a_plan_that_differs_only_in_group_sizes(trained_checkpoint, tmp_path):
    """A plan whose group sizes disagree with the checkpoint's own plan (same kept indices) is not exported."""
    checkpoint, plan_path = write_sliced_checkpoint(trained_checkpoint, tmp_path)
    plan = changed_plan(plan_path, tmp_path, lambda d: d["group_sizes"].update({first_group(d): 310}))
    with pytest.raises(StructureError, match="has 310 elements, but the model's has"):
        export_compressed(checkpoint, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    export_compressed(checkpoint, plan_path, tmp_path / "out", formats=["torchscript"])  # its own plan: fine
