"""MNIST loader: the bundled pickle, the IDX reader (checked against the pickle path) and bad input."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from deepiot.data import DataError, DatasetBundle, load_mnist
from deepiot.data.mnist import IDX_NAMES, NUM_VAL, PIXEL_SCALE, bundled_pickle_path, read_pickle

NUM_TRAIN_SYNTHETIC = 12  # training images beyond the NUM_VAL the IDX reader holds out for validation
NUM_TEST_SYNTHETIC = 7


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file, gzip-compressed if `path` ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    content = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as file:
            file.write(content)
    else:
        path.write_bytes(content)


def write_pickle(path: Path, data: object) -> None:
    """Write `data` as a gzip pickle in protocol 2, like mnist.pkl.gz."""
    with gzip.open(path, "wb", compresslevel=1) as file:
        pickle.dump(data, file, protocol=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The same random digits as an IDX directory (some files .gz) and as a mnist.pkl.gz-style pickle."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(7)
    train_images = rng.integers(0, 256, size=(NUM_TRAIN_SYNTHETIC + NUM_VAL, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, size=len(train_images), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(NUM_TEST_SYNTHETIC, 28, 28), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=NUM_TEST_SYNTHETIC, dtype=np.uint8)
    idx_dir = root / "idx"
    idx_dir.mkdir()
    write_idx(idx_dir / IDX_NAMES["train_images"], train_images)
    write_idx(idx_dir / f"{IDX_NAMES['train_labels']}.gz", train_labels)
    write_idx(idx_dir / f"{IDX_NAMES['test_images']}.gz", test_images)
    write_idx(idx_dir / IDX_NAMES["test_labels"], test_labels)

    def as_pickle_split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (images.reshape(len(images), -1) / np.float32(256)).astype(np.float32), labels.astype(np.int64)

    cut = NUM_TRAIN_SYNTHETIC
    splits = (
        as_pickle_split(train_images[:cut], train_labels[:cut]),
        as_pickle_split(train_images[cut:], train_labels[cut:]),
        as_pickle_split(test_images, test_labels),
    )
    pickle_path = root / "mnist.pkl.gz"
    write_pickle(pickle_path, splits)
    return {"idx_dir": idx_dir, "pickle": pickle_path, "splits": splits}


@pytest.fixture(scope="module")
def real() -> DatasetBundle:
    return load_mnist()


@pytest.fixture(scope="module")
def real_raw() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return read_pickle(bundled_pickle_path())


def tiny_splits(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Three small (images float32 [n, 784] in [0, 1], labels int64) splits in the mnist.pkl.gz layout."""
    rng = np.random.default_rng(seed)
    return tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n, dtype=np.int64)) for n in (20, 8, 8)
    )


def split_sizes(bundle: DatasetBundle) -> list[int]:
    return [len(bundle.train), len(bundle.val), len(bundle.test)]


def test_real_mnist_has_classic_splits_shapes_and_types(real: DatasetBundle) -> None:
    assert split_sizes(real) == [50000, 10000, 10000]
    assert real.input_shape == (1, 28, 28) and real.channel_axis == 0
    assert real.num_classes == 10 and real.class_names == [str(d) for d in range(10)]
    for split in (real.train, real.val, real.test):
        images, labels = split.tensors
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 28, 28)
        assert torch.equal(torch.unique(labels), torch.arange(10))
    assert real.source == str(bundled_pickle_path())


def test_real_mnist_is_normalised_with_training_statistics_only(
    real: DatasetBundle, real_raw: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    train_pixels = torch.from_numpy(real_raw["train"][0])
    train_mean, train_std = (
        train_pixels.double().mean().item(),
        train_pixels.double().std(correction=0).item(),
    )
    assert real.normalization["mean"] == pytest.approx([train_mean], rel=1e-6)
    assert real.normalization["std"] == pytest.approx([train_std], rel=1e-6)
    train = real.train.tensors[0]
    assert abs(train.mean().item()) < 1e-4 and train.std().item() == pytest.approx(1.0, abs=1e-4)
    test = real.test.tensors[0]
    expected_test = (torch.from_numpy(real_raw["test"][0]).double().mean().item() - train_mean) / train_std
    assert test.double().mean().item() == pytest.approx(expected_test, abs=1e-5)
    assert abs(test.mean().item()) > 1e-3  # statistics were not recomputed on the test split


def test_real_pickle_pixels_are_bytes_over_256(real_raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """mnist.pkl.gz stores pixel / 256, which is why the IDX reader divides by PIXEL_SCALE = 256."""
    images = real_raw["val"][0]
    as_bytes = images * PIXEL_SCALE
    assert np.array_equal(as_bytes, np.round(as_bytes))
    assert as_bytes.min() == 0 and as_bytes.max() == 255


def test_idx_reader_and_pickle_give_identical_bundles(synthetic: dict[str, object]) -> None:
    from_idx = load_mnist(str(synthetic["idx_dir"]))
    from_pickle = load_mnist(str(synthetic["pickle"]))
    assert split_sizes(from_idx) == [NUM_TRAIN_SYNTHETIC, NUM_VAL, NUM_TEST_SYNTHETIC]
    for name in ("train", "val", "test"):
        idx_split, pickle_split = getattr(from_idx, name).tensors, getattr(from_pickle, name).tensors
        assert torch.equal(idx_split[0], pickle_split[0]) and torch.equal(idx_split[1], pickle_split[1])
    assert from_idx.normalization == from_pickle.normalization


def test_idx_validation_split_is_the_last_training_images(synthetic: dict[str, object]) -> None:
    bundle = load_mnist(str(synthetic["idx_dir"]))
    mean, std = bundle.normalization["mean"][0], bundle.normalization["std"][0]
    val_pixels = bundle.val.tensors[0].double() * std + mean
    expected = synthetic["splits"][1][0].reshape(-1, 1, 28, 28)
    np.testing.assert_allclose(val_pixels.numpy(), expected, atol=1e-6)


def test_limit_draws_a_deterministic_subset_per_split(synthetic: dict[str, object]) -> None:
    first = load_mnist(str(synthetic["pickle"]), limit=5, seed=3)
    again = load_mnist(str(synthetic["pickle"]), limit=5, seed=3)
    other = load_mnist(str(synthetic["pickle"]), limit=5, seed=4)
    assert split_sizes(first) == [5, 5, 5]
    assert torch.equal(first.val.tensors[0], again.val.tensors[0])
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])
    train = first.train.tensors[0]
    assert abs(train.mean().item()) < 1e-5  # statistics come from the subset actually used


def test_limit_must_be_positive(synthetic: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="limit"):
        load_mnist(str(synthetic["pickle"]), limit=0)


# --- bad input: every error is a DataError naming the file -------------------------------------------------


def copy_idx_dir(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_missing_root_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_mnist(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(info.value)


def test_missing_idx_file_is_named(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    (root / IDX_NAMES["test_labels"]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_mnist(str(root))
    assert str(root) in str(info.value)


def test_truncated_idx_file_reports_header_and_bytes(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    images = root / IDX_NAMES["train_images"]
    images.write_bytes(images.read_bytes()[:1250])
    with pytest.raises(DataError, match="is truncated: header says 10012 images of 28x28") as info:
        load_mnist(str(root))
    assert str(images) in str(info.value) and "1234 bytes follow" in str(info.value)


def test_truncated_gzip_idx_file_is_reported(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    labels = root / f"{IDX_NAMES['train_labels']}.gz"
    labels.write_bytes(labels.read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated or not valid gzip") as info:
        load_mnist(str(root))
    assert str(labels) in str(info.value)


def test_wrong_magic_number_is_reported(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    labels = root / IDX_NAMES["test_labels"]
    labels.write_bytes(b"\x00\x00\x0d\x01" + labels.read_bytes()[4:])  # float type code instead of ubyte
    with pytest.raises(DataError, match="IDX header") as info:
        load_mnist(str(root))
    assert str(labels) in str(info.value)


def test_wrong_image_size_is_reported(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    images = root / f"{IDX_NAMES['test_images']}.gz"
    write_idx(images, np.zeros((NUM_TEST_SYNTHETIC, 27, 27), dtype=np.uint8))
    with pytest.raises(DataError, match=r"\(27, 27\). Expected 28x28") as info:
        load_mnist(str(root))
    assert str(images) in str(info.value)


def test_label_out_of_range_is_reported(synthetic: dict[str, object], tmp_path: Path) -> None:
    root = copy_idx_dir(synthetic["idx_dir"], tmp_path / "idx")
    labels = root / IDX_NAMES["test_labels"]
    write_idx(labels, np.full(NUM_TEST_SYNTHETIC, 12, dtype=np.uint8))
    with pytest.raises(DataError, match="label 12. Expected digits 0 to 9") as info:
        load_mnist(str(root))
    assert str(labels) in str(info.value)


def test_truncated_pickle_is_reported(synthetic: dict[str, object], tmp_path: Path) -> None:
    broken = tmp_path / "mnist.pkl.gz"
    broken.write_bytes(Path(synthetic["pickle"]).read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_mnist(str(broken))
    assert str(broken) in str(info.value)


def test_pickle_with_wrong_layout_is_reported(tmp_path: Path) -> None:
    train, val, _ = tiny_splits()
    two_splits = tmp_path / "two.pkl.gz"
    write_pickle(two_splits, (train, val))
    with pytest.raises(DataError, match="not 3 splits") as info:
        load_mnist(str(two_splits))
    assert str(two_splits) in str(info.value)
    flat = tmp_path / "flat.pkl.gz"
    write_pickle(flat, (train, val, (train[0][:, :100], train[1])))
    with pytest.raises(DataError, match=r"test split has images of shape \(20, 100\)"):
        load_mnist(str(flat))


def test_nan_pixels_are_reported(tmp_path: Path) -> None:
    train, val, test = tiny_splits()
    poisoned = (train[0].copy(), train[1])
    poisoned[0][3, 100] = np.nan
    path = tmp_path / "nan.pkl.gz"
    write_pickle(path, (poisoned, val, test))
    with pytest.raises(DataError, match="1 NaN or infinite values") as info:
        load_mnist(str(path))
    assert str(path) in str(info.value) and "train split" in str(info.value)


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_referencing_other_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "was_run"
    path = tmp_path / "evil.pkl.gz"
    write_pickle(path, _RunsCommand(marker))
    with pytest.raises(DataError, match="is not allowed") as info:
        load_mnist(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()
