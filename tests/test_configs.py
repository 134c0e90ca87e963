from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from deepiot.cli import CONFIG_DIR, compose_config
from deepiot.cli.compress import compression_config
from deepiot.compression import CompressionConfig, CriticConfig
from deepiot.compression.config import CONFIG_GROUPS
from deepiot.data import DataError
from deepiot.train import TrainerConfig, check_train_config, result_config, train
from deepiot.utils import ConfigError, config_to_dataclass

EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))
EXPECTED = {
    "lenet5_mnist": ("deepiot.data.load_mnist", "deepiot.models.LeNet5"),
    "lenet300_mnist": ("deepiot.data.load_mnist", "deepiot.models.LeNet300"),
    "deepsense_hapt_activity": ("deepiot.data.load_hapt_activity", "deepiot.models.DeepSense"),
    "deepsense_hapt_user": ("deepiot.data.load_hapt_user", "deepiot.models.DeepSense"),
    "lstm_hapt_activity": ("deepiot.data.load_hapt_activity", "deepiot.models.LSTMClassifier"),
    "vgg_cifar10": ("deepiot.data.load_cifar10", "deepiot.models.VGG"),
}


@pytest.fixture(autouse=True)
def clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def test_every_experiment_file_is_listed():
    assert sorted(EXPECTED) == EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_its_data_model_and_name(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert (cfg.data.dataset._target_, cfg.model._target_) == EXPECTED[experiment]
    assert cfg.name == experiment
    assert cfg.paths.original_dir == f"outputs/train/{experiment}"
    if experiment != "vgg_cifar10":  # needs the user's CIFAR-10 folder
        check_train_config(cfg)


def test_default_config_is_the_lenet5_mnist_experiment(tmp_path):
    default = OmegaConf.to_container(compose_config([f"paths.output_dir={tmp_path}"]), resolve=True)
    lenet5 = OmegaConf.to_container(
        compose_config(["experiment=lenet5_mnist", f"paths.output_dir={tmp_path}"]), resolve=True
    )
    assert default == lenet5


def test_run_and_sweep_folders_are_deterministic():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose(config_name="config", overrides=["experiment=lenet300_mnist"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/train/lenet300_mnist"
    assert cfg.hydra.sweep.dir == "multirun/train/lenet300_mnist"


def test_vgg_without_cifar_folder_names_the_missing_setting(tmp_path):
    cfg = compose_config(["experiment=vgg_cifar10", f"paths.output_dir={tmp_path}"])
    with pytest.raises(DataError, match=r"data\.dataset\.root=<path>/cifar-10-batches-py"):
        train(cfg)
    assert list(tmp_path.iterdir()) == []


def test_missing_mandatory_value_fails_before_loading_data(tmp_path):
    cfg = compose_config(["data=npz", "model=lstm", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.dataset\.path must be set"):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.optimizer=adamw", "trainer.optimizer='adamw' is invalid: expected one of: adam, sgd"),
        ("trainer.epochs=0", "trainer.epochs=0 is invalid: expected an integer >= 1"),
        ("trainer.lr=-1", "trainer.lr=-1 is invalid: expected a number > 0"),
        ("trainer.lr_schedule=linear", "expected one of: constant, cosine, step"),
        ("progress_bar=sometimes", "expected true, false or auto"),
        ("data.batch_size=0", "data.batch_size=0 is invalid"),
        ("trainer.device=tpu9", "trainer.device='tpu9' is not a torch device"),
    ],
)
def test_bad_config_value_gives_clear_error(override, message, tmp_path):
    cfg = compose_config([override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(cfg)


def test_result_config_ignores_presentation_keys(tmp_path):
    base = compose_config([f"paths.output_dir={tmp_path}"])
    cosmetic = compose_config([f"paths.output_dir={tmp_path}/other", "progress_bar=false", "num_threads=1"])
    changed = compose_config([f"paths.output_dir={tmp_path}", "trainer.lr=0.01"])
    as_dict = lambda cfg: result_config(OmegaConf.to_container(cfg, resolve=True))  # noqa: E731
    assert as_dict(base) == as_dict(cosmetic)
    assert as_dict(base) != as_dict(changed)


# ---------------------------------------------------------------------------------------------- settings defined once

SETTINGS_GROUPS = {
    group: typing.get_type_hints(CompressionConfig)[name] for name, group in CONFIG_GROUPS.items()
}
REPORT_ONLY = {
    "compress": {"latency_threads"}
}  # read by the report, not by a dataclass (check_report_settings)
FROM_OTHER_GROUPS = {"critic": {"cost"}}  # critic.cost is the cost group's name
GROUP_FILES = [
    (group, path.stem) for group in SETTINGS_GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))
]


@pytest.mark.parametrize(("group", "option"), GROUP_FILES)
def test_every_yaml_setting_is_a_dataclass_field_and_every_field_is_set_in_yaml(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}", f"paths.output_dir={tmp_path}"])
    schema = SETTINGS_GROUPS[group]
    keys = set(cfg[group]) - REPORT_ONLY.get(group, set())
    assert keys == {field.name for field in dataclasses.fields(schema)} - FROM_OTHER_GROUPS.get(group, set())
    built = getattr(compression_config(cfg), next(n for n, g in CONFIG_GROUPS.items() if g == group))
    yaml_values = OmegaConf.to_container(cfg[group], resolve=True)
    assert {key: json.loads(json.dumps(getattr(built, key))) for key in keys} == {
        key: yaml_values[key] for key in keys
    }
    if group == "critic":
        assert built.cost == cfg.cost.name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_trainer_group_is_exactly_trainer_config(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert set(cfg.trainer) == {field.name for field in dataclasses.fields(TrainerConfig)}
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert dataclasses.asdict(config_to_dataclass(TrainerConfig, values, "trainer")) == values


def test_an_unknown_trainer_setting_is_refused_before_training(tmp_path):
    cfg = compose_config(["+trainer.learning_rate=0.1", f"paths.output_dir={tmp_path}"])
    with pytest.raises(
        ConfigError, match=r"config key trainer\.learning_rate is unknown: expected one of .*lr"
    ):
        train(cfg)
    assert list(tmp_path.iterdir()) == []


def test_config_to_dataclass_fills_tuples_and_names_a_bad_key_or_value():
    critic = config_to_dataclass(CriticConfig, {"lr": 0.01, "betas": [0.8, 0.99]}, "critic")
    assert (critic.lr, critic.betas) == (0.01, (0.8, 0.99))
    with pytest.raises(ConfigError, match=r"config key critic\.bogus is unknown: expected one of .*baseline"):
        config_to_dataclass(CriticConfig, {"bogus": 1}, "critic")
    with pytest.raises(ConfigError, match=r"critic\.lr='fast' has the wrong type: expected"):
        config_to_dataclass(CriticConfig, {"lr": "fast"}, "critic")
    with pytest.raises(
        ConfigError, match=r"invalid critic config: critic\.lr and critic\.value_lr must be > 0"
    ):
        config_to_dataclass(CriticConfig, {"lr": -1.0}, "critic")


def test_an_unknown_compression_setting_on_the_command_line_is_refused(tmp_path):
    cfg = compose_config(["+schedule.final_tua=0.5", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"config key schedule\.final_tua is unknown"):
        compression_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "lr", "schedule"),
    [
        (["compress=paper"], 0.003, "cosine"),  # compress=paper picks finetune=long
        (["compress=paper", "finetune=paper"], 0.0001, "constant"),  # parity stays reachable
        (["finetune=paper"], 0.0001, "constant"),
        ([], 0.001, "cosine"),
    ],
)
def test_compress_paper_fine_tunes_long_unless_the_paper_optimiser_is_asked_for(overrides, lr, schedule):
    finetune = compose_config(overrides).finetune
    assert (finetune.lr, finetune.schedule) == (lr, schedule)


@pytest.mark.parametrize(
    ("command", "overrides", "expected"),
    [
        ("compress", [], (0, 0, 0)),
        ("compress", ["seed=3"], (3, 3, 3)),
        ("compress", ["seed=3", "compress.seed=5"], (3, 5, 5)),
        ("compress", ["compress.seed=5", "finetune.seed=7"], (0, 5, 7)),
        ("baseline", ["seed=3"], (3, 3, 3)),
        ("baseline", ["seed=3", "run_seed=5"], (3, 5, 5)),
    ],
)
def test_the_four_seeds_do_what_docs_design_section_7_says(command, overrides, expected):
    """`seed` decides the original (its run folder), `compress.seed` the search, `finetune.seed` the fine-tuning
    (each defaults to the one before), and deepiot-baseline's `run_seed` the method while `seed` stays."""
    from deepiot.cli.baseline import compose_baseline_config

    compose = compose_baseline_config if command == "baseline" else compose_config
    cfg = compose([*overrides, "paths.output_dir=/tmp/run"])
    config = compression_config(cfg)
    assert (cfg.seed, config.loop.seed, config.finetune.seed) == expected
    assert cfg.paths.original_dir == "outputs/train/lenet5_mnist" + (
        "" if expected[0] == 0 else f"_seed{expected[0]}"
    )
    if command == "baseline":
        assert cfg.run_seed == expected[1]
