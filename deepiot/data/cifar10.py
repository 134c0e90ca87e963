"""CIFAR-10 from the standard python-pickle folder (cifar-10-batches-py); not bundled, the user supplies it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepiot.data.base import DatasetBundle
from deepiot.data.errors import DataError
from deepiot.data.prep import Split, check_limit, make_bundle
from deepiot.data.safe_pickle import load_restricted

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
SIDE = 32
CHANNELS = 3
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-py"
BATCH_FORMAT = (
    "Expected a CIFAR-10 python batch: a pickled dict with b'data' (uint8 [n, 3072], each row 1024 red, "
    "1024 green, 1024 blue values of a 32x32 image) and b'labels' (n integers 0-9)."
)


def load_cifar10(
    root: str | None = None, limit: int | None = None, val_size: int = 5000, seed: int = 0
) -> DatasetBundle:
    """CIFAR-10 as [N, 3, 32, 32] images: 45000/5000 train/val (seeded split of the 50000) and 10000 test.

    Args:
        root: the extracted `cifar-10-batches-py` folder (or its parent).
        limit: keep at most this many samples per split (a subset drawn with `seed`).
        val_size: training images held out, at random with `seed`, for validation.
        seed: seed of the validation split and of the `limit` subset.
    """
    check_limit(limit)
    folder = find_folder(root)
    train_x, train_y = _concat([read_batch(folder / name) for name in TRAIN_BATCHES])
    if not 0 <= val_size < len(train_y):
        raise ValueError(f"val_size must be in [0, {len(train_y)}), got {val_size}")
    held_out = np.random.default_rng(seed).permutation(len(train_y))
    val_idx, train_idx = np.sort(held_out[:val_size]), np.sort(held_out[val_size:])
    splits = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": read_batch(folder / TEST_BATCH),
    }
    names = read_class_names(folder / META)
    return make_bundle("cifar10", splits, names, channel_axis=0, source=str(folder), limit=limit, seed=seed)


def find_folder(root: str | Path | None) -> Path:
    """The folder holding the batches: `root` itself or its cifar-10-batches-py subfolder."""
    where = (
        "Download the python version (cifar-10-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
        f"extract it and pass root=<path>/{FOLDER} (on the command line: data.dataset.root=<path>/{FOLDER})."
    )
    if root is None:
        raise DataError(f"CIFAR-10 is not bundled with deepiot and has no offline copy here. {where}")
    path = Path(root).expanduser()
    folder = path / FOLDER if (path / FOLDER).is_dir() else path
    if not (folder / TEST_BATCH).is_file():
        raise DataError(
            f"CIFAR-10 folder {folder} does not contain {TEST_BATCH}. Expected the extracted {FOLDER} folder with "
            f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} and {META}. {where}"
        )
    return folder


def read_batch(path: Path) -> Split:
    """Images uint8 [n, 3, 32, 32] scaled to float32 [0, 1] and labels int64 [n] of one batch file."""
    batch = load_restricted(path, "CIFAR-10 batch", encoding="bytes")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"CIFAR-10 batch {path} has data of type {_describe(data)}. {BATCH_FORMAT}")
    if data.shape[1] != CHANNELS * SIDE * SIDE:
        raise DataError(f"CIFAR-10 batch {path} has data of shape {data.shape}. {BATCH_FORMAT}")
    label_array = np.asarray(labels)
    if label_array.shape != (len(data),) or not np.issubdtype(label_array.dtype, np.integer):
        raise DataError(
            f"CIFAR-10 batch {path} has labels {_describe(labels)} for {len(data)} images. {BATCH_FORMAT}"
        )
    if label_array.size and (label_array.min() < 0 or label_array.max() >= len(CLASS_NAMES)):
        raise DataError(
            f"CIFAR-10 batch {path} has labels in [{label_array.min()}, {label_array.max()}]. {BATCH_FORMAT}"
        )
    images = data.reshape(-1, CHANNELS, SIDE, SIDE).astype(np.float32) / np.float32(
        255
    )  # rows are R, G, B planes
    return images, label_array.astype(np.int64)


def read_class_names(path: Path) -> list[str]:
    """Class names from batches.meta (b'label_names'), or the standard ten if the file is absent."""
    if not path.is_file():
        return list(CLASS_NAMES)
    names = _field(load_restricted(path, "CIFAR-10 metadata", encoding="bytes"), "label_names", path)
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES):
        raise DataError(
            f"CIFAR-10 metadata {path} has label_names {_describe(names)}. Expected a list of 10 names."
        )
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def _field(batch: Any, key: str, path: Path) -> Any:
    """batch[b'key'] (as written by Python 2) or batch['key'] (re-pickled by Python 3)."""
    if isinstance(batch, dict):
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
    raise DataError(
        f"CIFAR-10 file {path} is a {type(batch).__name__} without the key {key!r}. {BATCH_FORMAT}"
    )


def _describe(value: Any) -> str:
    """Type, dtype and shape of `value`, for error messages."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}"
    return (
        f"{type(value).__name__} of length {len(value)}"
        if hasattr(value, "__len__")
        else type(value).__name__
    )


def _concat(splits: list[Split]) -> Split:
    """Concatenate (images, labels) pairs."""
    return np.concatenate([x for x, _ in splits]), np.concatenate([y for _, y in splits])
