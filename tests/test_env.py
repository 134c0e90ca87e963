"""The `deepiot/Compress-v0` gymnasium environment: API contract, determinism, reward and results."""

from __future__ import annotations

import importlib
import json
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn
from torch.utils.data import TensorDataset

import deepiot
from deepiot.checkpoint import save_checkpoint
from deepiot.data import DatasetBundle
from deepiot.env import EVAL_BATCH_SIZE, OBSERVATION_FIELDS, CompressEnv
from deepiot.runtime import evaluate

SMALL = {"data_limit": 256, "finetune_steps": 2, "eval_samples": 200}


@pytest.fixture(scope="module")
def env() -> gymnasium.Env:
    """One small LeNet-300-100 / MNIST env shared by the module (made through the registry)."""
    made = gymnasium.make("deepiot/Compress-v0", render_mode="ansi", **SMALL)
    yield made
    made.close()


def run_episode(env: gymnasium.Env, keep_ratios: list[float], seed: int | None = 0) -> list[tuple]:
    """(obs, reward, terminated, truncated, info) of every step, the reset (obs, info) first."""
    trajectory = [env.reset(seed=seed)]
    for ratio in keep_ratios:
        trajectory.append(env.step(np.array([ratio], dtype=np.float32)))
    return trajectory


def test_check_env_passes_without_warnings(env: gymnasium.Env) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(warning.message) for warning in caught] == []


def test_make_without_arguments_builds_the_default_episode() -> None:
    default = gymnasium.make("deepiot/Compress-v0")
    observation, info = default.reset(seed=0)
    unwrapped = default.unwrapped
    assert isinstance(unwrapped, CompressEnv)
    assert [group.name for group in unwrapped.structure.groups] == ["fc1", "fc2"]
    assert unwrapped.model_config["_target_"] == "deepiot.models.LeNet300"
    assert len(unwrapped.eval_labels) == 1000 and len(unwrapped.train_labels) == 2048
    assert unwrapped.original_accuracy > 0.8  # pre-trained inside the env
    assert default.observation_space.contains(observation) and info == {"group": "fc1"}


def test_registration_survives_reimport() -> None:
    importlib.reload(deepiot)
    assert gymnasium.spec("deepiot/Compress-v0").entry_point == "deepiot.env:CompressEnv"


def test_spaces_and_observation_layout(env: gymnasium.Env) -> None:
    assert env.action_space == gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
    assert env.observation_space.shape == (len(OBSERVATION_FIELDS),)
    trajectory = run_episode(env, [0.5, 0.5])
    observations = [step[0] for step in trajectory]
    for observation in observations:
        assert observation.dtype == np.float32 and env.observation_space.contains(observation)
    field = {name: index for index, name in enumerate(OBSERVATION_FIELDS)}
    first, second, last = observations
    assert (
        first[field["kind_linear"]] == 1 and first[field["position"]] == 0 and first[field["remaining"]] == 1
    )
    assert first[field["cost_ratio"]] == 1 and first[field["previous_keep"]] == 1
    assert second[field["position"]] == 0.5 and second[field["previous_keep"]] == 0.5
    assert last[field["remaining"]] == 0 and last[field["kind_linear"]] == 0
    assert last[field["cost_ratio"]] == pytest.approx(trajectory[-1][4]["cost_ratio"])


def test_same_seed_and_actions_give_the_same_trajectory(env: gymnasium.Env) -> None:
    first, second = run_episode(env, [0.4, 0.7], seed=3), run_episode(env, [0.4, 0.7], seed=3)
    for step_a, step_b in zip(first, second, strict=True):
        for value_a, value_b in zip(step_a, step_b, strict=True):
            np.testing.assert_equal(value_a, value_b)
    other_seed = run_episode(env, [0.4, 0.7], seed=4)
    assert other_seed[-1][1] != first[-1][1]  # the seed drives the fine-tuning batches


def test_intermediate_steps_pay_nothing_and_the_last_terminates(env: gymnasium.Env) -> None:
    trajectory = run_episode(env, [0.3, 0.3])
    _, reward, terminated, truncated, info = trajectory[1]
    assert (reward, terminated, truncated) == (0.0, False, False) and info["kept_count"] == 90
    _, reward, terminated, truncated, info = trajectory[2]
    assert terminated and not truncated
    assert reward == pytest.approx(-info["loss"] - 1.0 * info["cost_ratio"], abs=1e-6)  # lam = 1
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.array([0.5], dtype=np.float32))


def test_keeping_everything_without_finetuning_is_the_original() -> None:
    full = CompressEnv(data_limit=256, finetune_steps=0, eval_samples=200)
    info = run_episode(full, [1.0, 1.0])[-1][4]
    assert info["cost_ratio"] == 1.0 and info["params"] == info["original_params"] == 266_610
    assert info["accuracy"] == full.original_accuracy
    assert info["kept_counts"] == {"fc1": 300, "fc2": 100}


def test_smaller_keep_ratios_cost_less(env: gymnasium.Env) -> None:
    ratios = [run_episode(env, [keep, keep])[-1][4]["cost_ratio"] for keep in (1.0, 0.6, 0.3, 0.05)]
    assert ratios[0] == 1.0 and bool(np.all(np.diff(ratios) < 0))


def test_actions_are_clipped_to_min_keep_and_keep_the_largest_l1_columns(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    fc1 = env.unwrapped.model.fc1
    norms = fc1.weight.detach().abs().sum(dim=1) + fc1.bias.detach().abs()  # [300]: fan-in weights + bias
    env.step(np.array([0.0], dtype=np.float32))
    kept = env.unwrapped._kept["fc1"]
    assert len(kept) == round(0.02 * 300)  # min_keep
    assert sorted(kept) == sorted(torch.topk(norms, len(kept)).indices.tolist())


def test_sliced_model_matches_the_judged_structure(env: gymnasium.Env) -> None:
    info = run_episode(env, [0.25, 0.5])[-1][4]
    unwrapped = env.unwrapped
    sliced = unwrapped.sliced_model()
    assert sum(parameter.numel() for parameter in sliced.parameters()) == info["params"]
    assert (sliced.fc1.out_features, sliced.fc2.out_features) == (75, 50)
    sliced_accuracy = evaluate(sliced, unwrapped.eval_inputs, unwrapped.eval_labels, EVAL_BATCH_SIZE).accuracy
    assert sliced_accuracy == info["accuracy"]
    plan = unwrapped.slicing_plan()
    assert {name: len(indices) for name, indices in plan.kept.items()} == info["kept_counts"]
    assert plan.group_sizes == {"fc1": 300, "fc2": 100}


def test_reset_restores_the_original_weights(env: gymnasium.Env) -> None:
    unwrapped = env.unwrapped
    run_episode(env, [0.2, 0.2])  # fine-tunes the model
    changed = any(
        not torch.equal(value, unwrapped.original_state[name])
        for name, value in unwrapped.model.state_dict().items()
    )
    env.reset(seed=0)
    assert changed
    for name, value in unwrapped.model.state_dict().items():
        assert torch.equal(value, unwrapped.original_state[name])
    with pytest.raises(RuntimeError, match="no finished episode"):
        unwrapped.sliced_model()


def test_render_ansi_lists_kept_elements(env: gymnasium.Env) -> None:
    run_episode(env, [0.5])
    text = env.render()
    assert "fc1" in text and "150" in text and "50.0" in text
    assert text.splitlines()[2].split()[-2:] == ["-", "-"]  # fc2 not decided yet


def test_export_writes_models_plan_and_manifest(env: gymnasium.Env, tmp_path) -> None:
    info = run_episode(env, [0.3, 0.3])[-1][4]
    result = env.unwrapped.export(tmp_path / "export")
    manifest = json.loads(result.paths["manifest"].read_text())
    plan = json.loads(result.paths["slicing_plan"].read_text())
    assert manifest["cost"]["params"] == info["params"]
    assert manifest["metrics"]["val_accuracy"] == info["accuracy"]
    bundle = env.unwrapped.bundle
    assert (manifest["source"], manifest["dataset"], manifest["slicing_plan"]) == (
        "deepiot/Compress-v0",
        bundle.name,
        "slicing_plan.json",
    )
    assert manifest["class_names"] == list(bundle.class_names)
    assert {name: len(indices) for name, indices in plan["kept"].items()} == info["kept_counts"]
    assert max(result.max_abs_diff.values()) < 1e-4


def test_checkpoint_model_is_compressed_as_saved(env: gymnasium.Env, tmp_path) -> None:
    unwrapped = env.unwrapped
    path = tmp_path / "model.pt"
    state = {name: value + 0.01 for name, value in unwrapped.original_state.items()}
    save_checkpoint(
        {
            "kind": "trained_model",
            "model_config": unwrapped.model_config,
            "state_dict": state,
            "metrics": {},
            "config": {},
            "data": {"name": "mnist"},
        },
        path,
    )
    from_checkpoint = CompressEnv(checkpoint=str(path), **SMALL)
    assert all(torch.equal(value, state[name]) for name, value in from_checkpoint.original_state.items())
    with pytest.raises(ValueError, match="trained on 'mnist', not data='hapt_activity'"):
        CompressEnv(checkpoint=str(path), data="hapt_activity")
    with pytest.raises(ValueError, match="either model or checkpoint"):
        CompressEnv(model="lenet300", checkpoint=str(path))


def test_own_recurrent_model_on_own_data() -> None:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> TensorDataset:
        return TensorDataset(torch.randn(count, 16, 6, generator=generator), torch.randint(0, 3, (count,)))

    bundle = DatasetBundle(
        "toy", split(64), split(32), split(32), (16, 6), 3, ["a", "b", "c"], channel_axis=-1
    )
    own = CompressEnv(SensorNet(), bundle, finetune_steps=1)
    assert [(group.name, group.kind) for group in own.structure.groups] == [
        ("conv", "conv"),
        ("gru.l0", "rnn"),
    ]
    info = run_episode(own, [0.5, 0.5])[-1][4]
    assert info["kept_counts"] == {"conv": 4, "gru.l0": 6}
    assert sum(parameter.numel() for parameter in own.sliced_model().parameters()) == info["params"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"data": "imagenet"}, "unknown data 'imagenet'"),
        ({"cost": "joules"}, "unknown cost 'joules'"),
        ({"lam": -0.1}, "lam .* must be >= 0"),
        ({"min_keep": 0.0}, r"min_keep .* \(0, 1\]"),
        ({"finetune_steps": -1}, "finetune_steps must be an integer >= 0"),
        ({"render_mode": "human"}, "render_mode must be None or 'ansi'"),
    ],
)
def test_invalid_arguments_raise_clear_errors(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompressEnv(**arguments)


def test_invalid_action_is_refused(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one finite keep ratio"):
        env.step(np.array([0.5, 0.5], dtype=np.float32))


class SensorNet(nn.Module):
    """Conv1d → GRU → linear over [N, T, C] windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(x.transpose(1, 2)))  # [N, 8, T]
        outputs, _ = self.gru(hidden.transpose(1, 2))  # [N, T, 12]
        return self.fc(outputs.mean(dim=1))
