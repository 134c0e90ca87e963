from __future__ import annotations

import os

import pytest
import torch

from deepiot.checkpoint import CheckpointError, load_checkpoint, load_trained_model, save_checkpoint
from deepiot.models import LeNet300


def lenet300_payload() -> dict:
    model = LeNet300(input_shape=(1, 28, 28), num_classes=10, hidden1=12, hidden2=8)
    return {
        "kind": "trained_model",
        "model_config": {
            "_target_": "deepiot.models.LeNet300",
            "hidden1": 12,
            "hidden2": 8,
            "input_shape": [1, 28, 28],
            "num_classes": 10,
        },
        "state_dict": model.state_dict(),
        "metrics": {"test_accuracy": 0.5},
    }


def test_round_trip_restores_identical_outputs(tmp_path):
    payload = lenet300_payload()
    save_checkpoint(payload, tmp_path / "model.pt")
    model, checkpoint = load_trained_model(tmp_path / "model.pt")
    reference = LeNet300(hidden1=12, hidden2=8)
    reference.load_state_dict(payload["state_dict"])
    inputs = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(inputs), reference.eval()(inputs))
    assert not model.training
    assert checkpoint["format"] == "deepiot" and checkpoint["version"] == 1
    assert checkpoint["kind"] == "trained_model"
    assert checkpoint["metrics"] == {"test_accuracy": 0.5}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_checkpoint({"kind": "trained_model", "value": 1}, tmp_path / "a.pt")
    save_checkpoint({"kind": "trained_model", "value": 2}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["value"] == 2
    assert os.listdir(tmp_path) == ["a.pt"]


def test_saved_file_gets_the_usual_permissions(tmp_path):
    save_checkpoint({"kind": "trained_model"}, tmp_path / "a.pt")
    (tmp_path / "reference").touch()
    assert (tmp_path / "a.pt").stat().st_mode == (tmp_path / "reference").stat().st_mode


def test_failed_save_keeps_previous_file(tmp_path):
    save_checkpoint({"kind": "trained_model", "value": 1}, tmp_path / "a.pt")
    unpicklable = (step for step in range(3))
    with pytest.raises(TypeError, match="cannot pickle 'generator'"):
        save_checkpoint({"kind": "trained_model", "value": unpicklable}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["value"] == 1
    assert os.listdir(tmp_path) == ["a.pt"]


def test_payload_without_kind_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no 'kind' key"):
        save_checkpoint({"state_dict": {}}, tmp_path / "a.pt")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_truncated_file(tmp_path):
    save_checkpoint(lenet300_payload(), tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "noise.pt")


def test_plain_state_dict_is_not_ours(tmp_path):
    torch.save(LeNet300().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a deepiot checkpoint.*fc1.weight"):
        load_checkpoint(tmp_path / "plain.pt")


def test_pickled_module_is_refused_for_safety(tmp_path):
    torch.save(LeNet300(), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(tmp_path / "module.pt")


def test_wrong_kind(tmp_path):
    save_checkpoint({"kind": "compression_state"}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="'compression_state' checkpoint, but a 'trained_model'"):
        load_trained_model(tmp_path / "state.pt")


def test_newer_version_is_refused(tmp_path):
    torch.save({"format": "deepiot", "version": 99, "kind": "trained_model"}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_state_dict_not_matching_model_config(tmp_path):
    payload = lenet300_payload()
    payload["model_config"]["hidden1"] = 13
    save_checkpoint(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_trained_model(tmp_path / "model.pt")
