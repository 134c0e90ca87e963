"""One source of truth for the settings: the dataclass defaults are what the command line's default
composition gives, field by field, so `deepiot.compress(...)` and `deepiot-compress` run the same recipe.

A setting that differs between experiments (the budget) is null in the group files and the dataclass; only
experiment/*.yaml (and config.yaml, for the run without an experiment) set it."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

import deepiot
import deepiot.api
from deepiot.api import OutputOptions
from deepiot.cli import CONFIG_DIR, compose_config
from deepiot.cli.compress import REPORT_KEYS, compression_config
from deepiot.compression import CompressionConfig
from deepiot.compression.budget import PROFILE_KEYS, LatencyProfile
from deepiot.compression.config import CONFIG_GROUPS
from deepiot.train import TrainerConfig

# Settings that legitimately differ per experiment: null (no budget) in the dataclass and the group files.
PER_EXPERIMENT = {"compress": {"target_params"}}
DEFAULT_BUDGET = 0.0198  # config.yaml's and experiment/lenet5_mnist.yaml's compress.target_params
EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def plain(value):
    """Tuples as lists, as in YAML."""
    return json.loads(json.dumps(value))


def composed_default(tmp_path, overrides=()):
    return OmegaConf.to_container(compose_config([*overrides, f"paths.output_dir={tmp_path}"]), resolve=True)


@pytest.mark.parametrize(("name", "group"), sorted(CONFIG_GROUPS.items()))
def test_every_dataclass_default_is_the_default_composition(name, group, tmp_path):
    composed = composed_default(tmp_path, ["compress.target_params=null"])[group]
    schema = typing.get_type_hints(CompressionConfig)[name]
    default = schema()
    mismatches = {
        field.name: (plain(getattr(default, field.name)), composed.get(field.name, "<absent>"))
        for field in dataclasses.fields(schema)
        if not (group == "critic" and field.name == "cost")  # the cost group's name, checked below
        and plain(getattr(default, field.name)) != composed.get(field.name, "<absent>")
    }
    assert mismatches == {}, f"{schema.__name__} default vs configs/{group} (dataclass, YAML): {mismatches}"
    extra = (
        set(composed)
        - {field.name for field in dataclasses.fields(schema)}
        - set(REPORT_KEYS if group == "compress" else ())
    )
    assert extra == set(), f"configs/{group} keys without a {schema.__name__} field: {extra}"


def test_critic_cost_profile_and_report_settings_are_the_default_composition(tmp_path):
    composed = composed_default(tmp_path)
    assert CompressionConfig().critic.cost == composed["cost"]["name"]
    profile = {key: composed["cost"][key] for key in PROFILE_KEYS}
    assert dataclasses.asdict(LatencyProfile()) == profile
    assert OutputOptions().latency_threads == composed["compress"]["latency_threads"]


def test_trainer_config_defaults_are_the_trainer_group(tmp_path):
    composed = composed_default(tmp_path)
    assert plain(dataclasses.asdict(TrainerConfig())) == composed["trainer"]


@pytest.mark.parametrize("option", sorted(path.name for path in (CONFIG_DIR / "compress").glob("*.yaml")))
def test_per_experiment_settings_are_null_in_the_dataclass_and_the_group_files(option):
    raw = yaml.safe_load((CONFIG_DIR / "compress" / option).read_text())
    for key in PER_EXPERIMENT["compress"]:
        assert getattr(CompressionConfig().loop, key) is None
        assert raw["compress"][key] is None, f"compress/{option} sets {key}: only experiments should"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_sets_its_own_budget(experiment):
    raw = yaml.safe_load((CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text())
    assert isinstance(raw.get("compress", {}).get("target_params"), float)


def test_the_run_without_an_experiment_has_the_default_budget(tmp_path):
    assert composed_default(tmp_path)["compress"]["target_params"] == DEFAULT_BUDGET
    assert composed_default(tmp_path, ["compress=paper"])["compress"]["target_params"] == DEFAULT_BUDGET


class Stop(Exception):
    """Raised by the stand-in for compress_model, carrying the config it was given."""


def test_the_python_api_builds_the_command_lines_config_for_the_default_experiment(tmp_path, monkeypatch):
    cli = compression_config(compose_config(["experiment=lenet5_mnist", f"paths.output_dir={tmp_path}"]))

    def capture(*args, **kwargs):
        raise Stop(args[4])

    monkeypatch.setattr(deepiot.api, "compress_model", capture)
    data = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(Stop) as stopped:
        outputs = OutputOptions(model_config={"_target_": "tests.Net"})  # no rebuild check
        deepiot.compress(model, data, data, target=DEFAULT_BUDGET, outputs=outputs, progress=False)
    api = stopped.value.args[0]
    assert api.to_dict() == cli.to_dict()
    assert api == cli
