"""The Hydra data configs instantiate the right loader (composed from the real configs/data folder)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from deepiot.data import DatasetBundle, loaders_by_name
from deepiot.data.cifar10 import FOLDER, TRAIN_BATCHES

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"


def compose_data(name: str, overrides: list[str]) -> object:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=name, overrides=overrides)


def test_every_loader_has_a_config_targeting_it() -> None:
    assert sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")) == sorted(loaders_by_name)
    for name, loader in loaders_by_name.items():
        cfg = compose_data(name, [])
        assert cfg.dataset._target_ == f"deepiot.data.{loader.__name__}"
        assert cfg.batch_size > 0 and cfg.num_workers == 0


@pytest.fixture
def generated_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / FOLDER
    folder.mkdir()
    for name in (*TRAIN_BATCHES, "test_batch"):
        batch = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, 4).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    npz = tmp_path / "windows.npz"
    np.savez(npz, X=rng.normal(size=(40, 8, 2)), y=rng.integers(0, 3, 40))
    return {"cifar10": folder, "npz": npz}


@pytest.mark.parametrize(
    ("name", "overrides", "input_shape"),
    [
        ("mnist", ["dataset.limit=50"], (1, 28, 28)),
        ("hapt_activity", ["dataset.limit=50"], (128, 6)),
        ("hapt_user", ["dataset.limit=50", "dataset.window=64"], (64, 6)),
        ("hapt_activity", ["dataset.limit=50", "dataset.fold=2"], (128, 6)),
        ("hapt_user", ["dataset.limit=50", "dataset.split=time_folds", "dataset.fold=4"], (128, 6)),
        ("hapt_user", ["dataset.limit=50", "dataset.split=cross_recording", "dataset.fold=1"], (128, 6)),
        ("cifar10", ["dataset.val_size=4", "dataset.root={cifar10}"], (3, 32, 32)),
        ("npz", ["dataset.path={npz}"], (8, 2)),
    ],
)
def test_instantiating_a_config_loads_its_dataset(
    name: str, overrides: list[str], input_shape: tuple[int, ...], generated_files: dict[str, Path]
) -> None:
    overrides = [override.format(**generated_files) for override in overrides]
    bundle = instantiate(compose_data(name, overrides).dataset)
    assert isinstance(bundle, DatasetBundle)
    assert bundle.input_shape == input_shape
    expected_name = "windows" if name == "npz" else name
    assert bundle.name == expected_name
