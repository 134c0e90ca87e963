from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from deepiot.cli import CONFIG_DIR, run_name
from deepiot.models import REFERENCE_MODELS, VGG, DeepSense, LeNet5, LeNet300, LSTMClassifier, build_model

CASES = [
    (LeNet5, (1, 28, 28), 10),
    (LeNet300, (1, 28, 28), 10),
    (VGG, (3, 32, 32), 10),
    (LSTMClassifier, (128, 6), 6),
    (DeepSense, (128, 6), 6),
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_has_caffe_parameter_count():
    assert n_params(LeNet5()) == 431_080


def test_lenet300_has_parameter_count():
    assert n_params(LeNet300()) == 266_610


@pytest.mark.parametrize(("cls", "shape", "classes"), CASES)
def test_output_shape_for_any_batch_size(cls, shape, classes):
    model = cls(input_shape=shape, num_classes=classes).eval()
    for batch in (1, 3):
        assert model(torch.randn(batch, *shape)).shape == (batch, classes)


def test_deepsense_widths_follow_config():
    model = DeepSense(conv_channels=16, gru_hidden=24)
    assert model.gru.hidden_size == 24
    assert model.merged_convs[0].in_channels == 32


def test_deepsense_rejects_non_imu_input():
    with pytest.raises(ValueError, match="6 input channels"):
        DeepSense(input_shape=(128, 3))


def test_the_model_configs_the_env_and_the_run_names_share_one_table():
    assert sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml")) == sorted(REFERENCE_MODELS)
    for name, model in REFERENCE_MODELS.items():
        target = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")["_target_"]
        assert target == f"deepiot.models.{model.__name__}"
        assert run_name(target, "deepiot.data.load_mnist") == f"{name}_mnist"


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_build_model_from_config_file(name):
    config = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))
    shape = (128, 6) if name in ("lstm", "deepsense") else ((3, 32, 32) if name == "vgg" else (1, 28, 28))
    model = build_model({**config, "input_shape": list(shape), "num_classes": 7})
    assert model(torch.randn(2, *shape)).shape == (2, 7)
