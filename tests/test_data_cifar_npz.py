"""CIFAR-10 (python-pickle batches) and .npz loaders, on small generated files in the standard formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from deepiot.data import DataError, load_cifar10, load_npz
from deepiot.data.cifar10 import CLASS_NAMES, FOLDER, TRAIN_BATCHES

PER_BATCH = 20


def cifar_batch(rng: np.random.Generator, n: int) -> dict[bytes, object]:
    """A batch like the official ones (pickled by Python 2, read with encoding='bytes'): bytes keys, uint8 rows."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, :1024] = np.arange(1024) % 256  # red plane: row-major ramp, to check the [3, 32, 32] layout
    data[:, 1024:2048] = 255  # green plane
    return {b"batch_label": b"synthetic", b"labels": rng.integers(0, 10, n).tolist(), b"data": data}


def write_pickle(path: Path, data: object) -> None:
    path.write_bytes(pickle.dumps(data, protocol=2))


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / FOLDER
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in (*TRAIN_BATCHES, "test_batch"):
        write_pickle(folder / name, cifar_batch(rng, PER_BATCH))
    write_pickle(folder / "batches.meta", {b"label_names": [name.encode() for name in CLASS_NAMES]})
    return folder


def test_cifar_shapes_splits_and_channel_layout(cifar_root: Path) -> None:
    bundle = load_cifar10(str(cifar_root), val_size=10)
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [5 * PER_BATCH - 10, 10, PER_BATCH]
    assert (
        bundle.input_shape == (3, 32, 32) and bundle.class_names == CLASS_NAMES and bundle.channel_axis == 0
    )
    images, labels = bundle.test.tensors
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and int(labels.max()) <= 9
    mean, std = torch.tensor(bundle.normalization["mean"]), torch.tensor(bundle.normalization["std"])
    pixels = images * std[:, None, None] + mean[:, None, None]
    ramp = torch.arange(1024).reshape(32, 32) % 256 / 255
    torch.testing.assert_close(pixels[:, 0], ramp.expand(PER_BATCH, 32, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 1], torch.ones(PER_BATCH, 32, 32), atol=1e-5, rtol=0)


def test_cifar_is_normalised_per_channel_with_train_statistics(cifar_root: Path) -> None:
    bundle = load_cifar10(str(cifar_root.parent), val_size=10)  # the parent of cifar-10-batches-py works too
    train = bundle.train.tensors[0].double()
    np.testing.assert_allclose(train.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    blue = train[:, 2]
    assert blue.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    assert bundle.normalization["std"][1] == 1.0  # the constant green plane is only centred
    assert abs(bundle.test.tensors[0][:, 2].double().mean().item()) > 1e-3


def test_cifar_validation_split_is_seeded_and_disjoint(cifar_root: Path) -> None:
    first = load_cifar10(str(cifar_root), val_size=10, seed=1)
    again = load_cifar10(str(cifar_root), val_size=10, seed=1)
    other = load_cifar10(str(cifar_root), val_size=10, seed=2)
    assert torch.equal(first.val.tensors[0], again.val.tensors[0])
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])
    train_rows = {tuple(row) for row in first.train.tensors[0].flatten(1)[:, 2048:2060].tolist()}
    assert not any(tuple(row) in train_rows for row in first.val.tensors[0].flatten(1)[:, 2048:2060].tolist())


def test_cifar_without_root_says_it_is_not_bundled() -> None:
    with pytest.raises(DataError, match="CIFAR-10 is not bundled") as info:
        load_cifar10(None)
    assert FOLDER in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)


def test_cifar_missing_batch_is_named(cifar_root: Path) -> None:
    (cifar_root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="does not exist") as info:
        load_cifar10(str(cifar_root))
    assert str(cifar_root / "data_batch_3") in str(info.value)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, r"shape \(4, 3000\)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "ndarray float32"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"labels in \[0, 10\]"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1]}, "list of length 2 for 4 images"),
        ({b"images": np.zeros((4, 3072), np.uint8)}, "without the key 'data'"),
    ],
)
def test_cifar_malformed_batch_is_reported(cifar_root: Path, batch: dict, message: str) -> None:
    write_pickle(cifar_root / "test_batch", batch)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(str(cifar_root), val_size=10)
    assert str(cifar_root / "test_batch") in str(info.value)


def test_cifar_truncated_or_foreign_pickle_is_reported(cifar_root: Path) -> None:
    batch = cifar_root / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:3000])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_cifar10(str(cifar_root))
    assert str(batch) in str(info.value)
    write_pickle(batch, {b"data": gzip.GzipFile})
    with pytest.raises(DataError, match="'gzip.GzipFile' is not allowed"):
        load_cifar10(str(cifar_root))


# --- npz ---------------------------------------------------------------------------------------------------

NUM_WINDOWS, STEPS, CHANNELS = 200, 16, 3


def windows(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, T, C] float64 windows whose channels have very different offsets and scales."""
    return rng.normal(size=(n, STEPS, CHANNELS)) * np.array([1.0, 10.0, 0.1]) + np.array([5.0, -3.0, 0.0])


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "sensors.npz"
    np.savez(path, X=windows(rng, NUM_WINDOWS), y=np.arange(NUM_WINDOWS) % 4)
    return path


def test_npz_random_split_sizes_and_normalisation(npz_file: Path) -> None:
    bundle = load_npz(str(npz_file))
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [140, 30, 30]
    assert bundle.input_shape == (STEPS, CHANNELS) and bundle.channel_axis == -1
    assert bundle.num_classes == 4 and bundle.class_names == ["0", "1", "2", "3"] and bundle.name == "sensors"
    train = bundle.train.tensors[0].double()
    np.testing.assert_allclose(train.mean(dim=(0, 1)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(dim=(0, 1), correction=0).numpy(), 1, atol=1e-5)
    assert bundle.normalization["mean"] == pytest.approx([5.0, -3.0, 0.0], abs=0.3)
    assert bundle.test.tensors[0].double().mean(dim=(0, 1)).abs().max() > 1e-4


def test_npz_random_split_is_a_seeded_partition(npz_file: Path) -> None:
    def label_multiset(bundle: object) -> list[int]:
        return sorted(torch.cat([getattr(bundle, s).tensors[1] for s in ("train", "val", "test")]).tolist())

    first, again, other = (
        load_npz(str(npz_file), seed=3),
        load_npz(str(npz_file), seed=3),
        load_npz(str(npz_file)),
    )
    assert torch.equal(first.test.tensors[0], again.test.tensors[0])
    assert not torch.equal(first.test.tensors[1], other.test.tensors[1])
    assert label_multiset(first) == sorted((np.arange(NUM_WINDOWS) % 4).tolist())


def test_npz_explicit_splits_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "explicit.npz"
    sizes = {"train": 30, "val": 7, "test": 9}
    arrays = {f"X_{s}": windows(rng, n).astype(np.float32) for s, n in sizes.items()}
    arrays |= {f"y_{s}": rng.integers(0, 2, n) for s, n in sizes.items()}
    np.savez_compressed(path, **arrays)
    bundle = load_npz(str(path), class_names=["still", "moving", "running"])
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == list(sizes.values())
    assert bundle.num_classes == 3 and bundle.class_names == ["still", "moving", "running"]
    expected_val = (arrays["X_val"] - np.array(bundle.normalization["mean"])) / np.array(
        bundle.normalization["std"]
    )
    np.testing.assert_allclose(bundle.val.tensors[0].numpy(), expected_val, atol=1e-5)


def save_and_expect(
    path: Path, message: str, class_names: list[str] | None = None, **arrays: np.ndarray
) -> None:
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_npz(str(path), class_names=class_names)
    assert str(path) in str(info.value)


def test_npz_bad_arrays_are_reported(tmp_path: Path) -> None:
    path, rng = tmp_path / "bad.npz", np.random.default_rng(2)
    x = windows(rng, 20)
    save_and_expect(path, r"X of shape \(20, 48\)", X=x.reshape(20, -1), y=np.zeros(20, int))
    save_and_expect(path, "y of shape .* dtype float64", X=x, y=np.zeros(20))
    save_and_expect(path, r"y of shape \(19,\)", X=x, y=np.zeros(19, int))
    save_and_expect(
        path, r"labels in \[5, 5\]. Expected integers in \[0, 2\]", ["a", "b", "c"], X=x, y=np.full(20, 5)
    )
    save_and_expect(path, r"labels in \[-1, ", X=x, y=np.arange(20) - 1)
    save_and_expect(path, "not X and y", data=x)
    save_and_expect(path, r"lacks \['X_val'", X_train=x, y_train=np.zeros(20, int))
    x[3, 2, 1] = np.inf
    save_and_expect(path, "1 NaN or infinite values", X=x, y=np.zeros(20, int))


def test_npz_missing_truncated_or_pickled_files_are_reported(npz_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_npz(str(tmp_path / "absent.npz"))
    assert str(tmp_path / "absent.npz") in str(info.value)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(npz_file.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated, corrupt") as info:
        load_npz(str(truncated))
    assert str(truncated) in str(info.value)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, X=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DataError, match="pickled objects"):
        load_npz(str(pickled))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 3, 4)))
    with pytest.raises(DataError, match="single .npy array") as info:
        load_npz(str(single))
    assert str(single) in str(info.value)
