"""The user's own sensor windows from a .npz file: X [N, T, C] and y [N], or explicit train/val/test arrays."""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepiot.data.base import DatasetBundle
from deepiot.data.errors import DataError
from deepiot.data.prep import Split, make_bundle

SPLIT_KEYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")
log = logging.getLogger(__name__)
NPZ_FORMAT = (
    "Expected a .npz (numpy.savez) file with X (float [N, T, C]: N windows of T time steps and C channels) and "
    "y (integer labels 0..K-1 [N]), or with explicit splits X_train, y_train, X_val, y_val, X_test, y_test."
)


def load_npz(
    path: str,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> DatasetBundle:
    """Sensor windows [N, T, C] from a .npz file, normalised per channel (last axis) with train statistics.

    With only X and y, windows are split at random (`val_frac`, `test_frac`, `seed`); if your windows overlap
    or come from several users, save explicit X_train/.../y_test splits instead so no user or overlapping
    pair of windows lands on both sides. Labels must be 0..K-1, K = len(class_names) or max label + 1.
    """
    file = Path(path).expanduser()
    arrays = read_npz(file)
    if any(key in arrays for key in SPLIT_KEYS):
        splits = explicit_splits(arrays, file)
    else:
        splits = random_splits(_split_arrays(arrays, file, "X", "y"), val_frac, test_frac, seed)
    if class_names is None:
        num_classes = 1 + max((int(y.max()) for _, y in splits.values() if y.size), default=0)
        class_names = [str(label) for label in range(max(num_classes, 1))]
        check_label_gaps(splits, num_classes, file)
    return make_bundle(file.stem, splits, list(class_names), channel_axis=-1, source=str(file), seed=seed)


def check_label_gaps(splits: dict[str, Split], num_classes: int, file: Path) -> None:
    """Labels must use 0..K-1 without gaps: warn naming the missing classes, refuse when most are missing.

    A stray label (e.g. 99 among 0..3) would otherwise silently train a 100-class model.
    """
    present = np.unique(np.concatenate([y for _, y in splits.values()]))
    missing = sorted(set(range(num_classes)) - {int(label) for label in present})
    if not missing or present.size == 0:  # no labels at all: make_bundle reports the empty split
        return
    shown = ", ".join(map(str, missing[:20])) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
    message = (
        f"npz file {file} has labels up to {num_classes - 1}, so the model gets {num_classes} classes, but "
        f"{len(missing)} of them never occur: {shown}. Expected labels 0..K-1 with every class present: "
        "renumber the labels, or pass data.dataset.class_names to name every class."
    )
    if len(missing) > num_classes / 2:
        raise DataError(message)
    log.warning(message)


def read_npz(file: Path) -> dict[str, np.ndarray]:
    """All arrays of the .npz `file`, read without unpickling objects."""
    if not file.is_file():
        raise DataError(f"npz file {file} does not exist. {NPZ_FORMAT}")
    try:
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise DataError(
            f"npz file {file} is truncated, corrupt or holds pickled objects and could not be read "
            f"({type(err).__name__}: {err}). {NPZ_FORMAT}"
        ) from err
    raise DataError(f"npz file {file} holds a single .npy array, not named arrays. {NPZ_FORMAT}")


def explicit_splits(arrays: dict[str, np.ndarray], file: Path) -> dict[str, Split]:
    """The X_train/y_train/X_val/y_val/X_test/y_test splits, with matching window shapes."""
    missing = [key for key in SPLIT_KEYS if key not in arrays]
    if missing:
        raise DataError(f"npz file {file} has some explicit split arrays but lacks {missing}. {NPZ_FORMAT}")
    splits = {
        name: _split_arrays(arrays, file, f"X_{name}", f"y_{name}") for name in ("train", "val", "test")
    }
    shapes = {name: x.shape[1:] for name, (x, _) in splits.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(
            f"npz file {file} has windows of different shapes [T, C] per split: {shapes}. {NPZ_FORMAT}"
        )
    return splits


def random_splits(split: Split, val_frac: float, test_frac: float, seed: int) -> dict[str, Split]:
    """Train/val/test drawn at random with `seed`; each keeps the file's order."""
    if not (val_frac >= 0 and test_frac >= 0 and val_frac + test_frac < 1):
        raise ValueError(
            f"data.dataset.val_frac={val_frac} and data.dataset.test_frac={test_frac} are invalid: expected "
            "0 <= val_frac, 0 <= test_frac and val_frac + test_frac < 1 (the rest is the training split)."
        )
    x, y = split
    order = np.random.default_rng(seed).permutation(len(y))
    num_test, num_val = round(len(y) * test_frac), round(len(y) * val_frac)
    parts = {
        "test": order[:num_test],
        "val": order[num_test : num_test + num_val],
        "train": order[num_test + num_val :],
    }
    return {name: (x[np.sort(idx)], y[np.sort(idx)]) for name, idx in parts.items()}


def _split_arrays(arrays: dict[str, np.ndarray], file: Path, x_key: str, y_key: str) -> Split:
    """(X float32 [N, T, C], y [N]) under keys `x_key`, `y_key`, checked for presence, shape and type."""
    if x_key not in arrays or y_key not in arrays:
        raise DataError(
            f"npz file {file} has arrays {sorted(arrays)} but not {x_key} and {y_key}. {NPZ_FORMAT}"
        )
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim != 3 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"npz file {file} has {x_key} of shape {x.shape} and dtype {x.dtype}. {NPZ_FORMAT}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"npz file {file} has {y_key} of shape {y.shape} and dtype {y.dtype} for {len(x)} windows. {NPZ_FORMAT}"
        )
    return x.astype(np.float32), y.astype(np.int64)
