"""HAPT loaders: the bundled pandas pickle, the official raw folder, windowing and the two split schemes."""

from __future__ import annotations

import gzip
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from deepiot.data import DataError, DatasetBundle, load_hapt_activity, load_hapt_user
from deepiot.data.hapt import (
    ACTIVITY_NAMES,
    TEST_USERS,
    USER_NAMES,
    activity_bouts,
    split_users,
    time_bounds,
    user_segments,
    window_labels,
    window_starts,
    window_step,
)
from deepiot.data.hapt_source import UNLABELLED, bundled_pickle_path, read_recordings

# Synthetic recordings: acc-x = sample index, acc-y = user, acc-z = experiment, so every window says where it came from.
SEGMENTS = [
    (1, 1, 100),
    (7, 101, 160),
    (4, 161, 400),
    (5, 401, 700),
]  # activity, start, end: 1-based inclusive
USERS = tuple(range(1, 9))
WINDOW, OVERLAP = 32, 0.5
USER_WINDOW = (
    16  # short enough to fit in every time part (20% = 20 samples) of the shortest bout (100 samples)
)
SPLIT_NAMES = ("train", "val", "test")


def experiments() -> list[tuple[int, int, int]]:
    """(experiment, user, length): two recordings per user, of different lengths."""
    return [(2 * (user - 1) + k, user, 720 + 13 * (2 * (user - 1) + k)) for user in USERS for k in (1, 2)]


def expected_labels(length: int) -> np.ndarray:
    """Per-sample activity of a synthetic recording (0-based), UNLABELLED outside the segments."""
    labels = np.full(length, UNLABELLED)
    for activity, start, end in SEGMENTS:
        labels[start - 1 : end] = activity
    return labels


def write_raw_hapt(root: Path) -> Path:
    """An official-layout HAPT folder with the synthetic recordings."""
    raw = root / "RawData"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for experiment, user, length in experiments():
        acc = np.stack([np.arange(length), np.full(length, user), np.full(length, experiment)], axis=1)
        name = f"exp{experiment:02d}_user{user:02d}.txt"
        np.savetxt(raw / f"acc_{name}", acc, fmt="%.8e")
        np.savetxt(raw / f"gyro_{name}", rng.normal(size=(length, 3)), fmt="%.8e")
        rows += [(experiment, user, activity, start, end) for activity, start, end in SEGMENTS]
    np.savetxt(raw / "labels.txt", np.array(rows), fmt="%d")
    return root


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raw_hapt(tmp_path_factory.mktemp("hapt"))


def origins(bundle: DatasetBundle, split: str) -> np.ndarray:
    """[N, window, 3] (sample index, user, experiment) of each synthetic window, undoing the normalisation."""
    windows = getattr(bundle, split).tensors[0].double().numpy()
    raw = windows * np.array(bundle.normalization["std"]) + np.array(bundle.normalization["mean"])
    return np.rint(raw[..., :3]).astype(int)


def brute_force_activity_count(num_classes: int) -> int:
    """Windows whose samples all share one activity in 1..num_classes, counted one window at a time."""
    count = 0
    for _, _, length in experiments():
        labels = expected_labels(length)
        for start in range(0, length - WINDOW + 1, window_step(WINDOW, OVERLAP)):
            piece = labels[start : start + WINDOW]
            count += bool((piece == piece[0]).all() and 1 <= piece[0] <= num_classes)
    return count


# --- windowing --------------------------------------------------------------------------------------------


def test_window_step_and_starts() -> None:
    assert window_step(128, 0.5) == 64 and window_step(128, 0.0) == 128 and window_step(10, 0.99) == 1
    assert window_starts(300, 128, 64).tolist() == [0, 64, 128]
    assert window_starts(100, 128, 64).size == 0
    with pytest.raises(ValueError, match="overlap"):
        window_step(128, 1.0)


def test_window_labels_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(rng.integers(-1, 4, size=60), rng.integers(1, 30, size=60))
    starts = window_starts(len(labels), 16, 5)
    reference = [labels[s] if len(set(labels[s : s + 16])) == 1 else UNLABELLED for s in starts]
    assert window_labels(labels, starts, 16).tolist() == reference


# --- the official raw folder ------------------------------------------------------------------------------


def test_raw_reader_builds_recordings_with_one_based_inclusive_labels(raw_root: Path) -> None:
    recordings, source = read_recordings(raw_root)
    assert source == raw_root
    assert [(r.experiment, r.user, len(r.labels)) for r in recordings] == experiments()
    first = recordings[0]
    assert first.signals.dtype == np.float32 and first.signals.shape == (len(first.labels), 6)
    np.testing.assert_array_equal(first.signals[:, 0], np.arange(len(first.labels)))  # acc-x first
    np.testing.assert_array_equal(first.labels, expected_labels(len(first.labels)))
    assert (
        first.labels[99] == 1
        and first.labels[100] == 7
        and first.labels[699] == 5
        and first.labels[700] == -1
    )


def test_raw_reader_accepts_the_rawdata_folder_itself(raw_root: Path) -> None:
    recordings, _ = read_recordings(raw_root / "RawData")
    assert len(recordings) == len(experiments())


def test_activity_windows_are_single_activity_and_split_by_user(raw_root: Path) -> None:
    bundle = load_hapt_activity(
        str(raw_root), window=WINDOW, overlap=OVERLAP, val_users=[3, 4], test_users=[7, 8]
    )
    assert bundle.input_shape == (WINDOW, 6) and bundle.channel_axis == -1
    assert bundle.class_names == ACTIVITY_NAMES[:6] and bundle.num_classes == 6
    users_seen = {}
    for split in ("train", "val", "test"):
        where, labels = origins(bundle, split), getattr(bundle, split).tensors[1].numpy()
        np.testing.assert_array_equal(
            np.diff(where[..., 0], axis=1), 1
        )  # consecutive samples of one recording
        assert (where[..., 1:] == where[:, :1, 1:]).all()
        lengths = {experiment: length for experiment, _, length in experiments()}
        for window, label in zip(where, labels, strict=True):
            assert (expected_labels(lengths[window[0, 2]])[window[:, 0]] == label + 1).all()
        users_seen[split] = set(where[:, 0, 1].tolist())
    assert users_seen == {"train": {1, 2, 5, 6}, "val": {3, 4}, "test": {7, 8}}
    total = sum(len(getattr(bundle, split)) for split in ("train", "val", "test"))
    assert total == brute_force_activity_count(6)


def test_transitions_are_dropped_or_kept_as_classes_6_to_11(raw_root: Path) -> None:
    kwargs = {"window": WINDOW, "overlap": OVERLAP, "val_users": [3], "test_users": [8]}
    basic = load_hapt_activity(str(raw_root), **kwargs)
    with_transitions = load_hapt_activity(str(raw_root), include_transitions=True, **kwargs)
    assert with_transitions.num_classes == 12 and with_transitions.class_names[6] == "STAND_TO_SIT"
    labels = torch.cat([with_transitions.train.tensors[1], with_transitions.test.tensors[1]])
    assert (labels == 6).sum() > 0 and basic.train.tensors[1].max() <= 5
    total = sum(len(getattr(with_transitions, split)) for split in ("train", "val", "test"))
    assert total == brute_force_activity_count(12)


def user_segments_of(length: int, split: str) -> list[tuple[int, int]]:
    """[start, end) of the segments load_hapt_user splits by time in a synthetic recording."""
    if split == "recording":
        return [(0, length)]
    return [(start - 1, end) for activity, start, end in SEGMENTS if activity <= 6]  # basic-activity bouts


def part_of_segment(start: int, end: int, part: int) -> tuple[int, int]:
    """[lower, upper) of time part `part` (0 train, 1 val, 2 test) of samples [start, end), 60/20/20."""
    lower, upper = time_bounds(end - start, 0.6, 0.2)[part : part + 2]
    return start + lower, start + upper


@pytest.mark.parametrize("split", ["bout", "recording"])
def test_user_windows_never_straddle_the_time_split(raw_root: Path, split: str) -> None:
    bundle = load_hapt_user(str(raw_root), window=USER_WINDOW, overlap=OVERLAP, split=split)
    assert bundle.num_classes == 30 and bundle.class_names == USER_NAMES
    lengths = {experiment: length for experiment, _, length in experiments()}
    total = 0
    for part, name in enumerate(SPLIT_NAMES):
        where, labels = origins(bundle, name), getattr(bundle, name).tensors[1].numpy()
        np.testing.assert_array_equal(labels, where[:, 0, 1] - 1)
        np.testing.assert_array_equal(
            where[..., 0] - where[:, :1, 0], np.broadcast_to(np.arange(USER_WINDOW), where.shape[:2])
        )  # consecutive samples of one recording
        assert (where[..., 1:] == where[:, :1, 1:]).all()
        for window in where:
            holding = [
                seg
                for seg in user_segments_of(lengths[window[0, 2]], split)
                if seg[0] <= window[0, 0] < seg[1]
            ]
            assert len(holding) == 1, f"window starting at {window[0, 0]} is in no {split}"
            lower, upper = part_of_segment(*holding[0], part)
            assert lower <= window[0, 0] and window[-1, 0] < upper
        assert set(where[:, 0, 1].tolist()) == set(USERS)
        activities = {
            (w[0, 1], expected_labels(lengths[w[0, 2]])[w[0, 0]]) for w in where
        }  # (user, activity)
        if split == "bout":  # every user shows every basic activity of the synthetic data in every split
            assert activities == {(user, activity) for user in USERS for activity in (1, 4, 5)}
        total += len(labels)
    step = window_step(USER_WINDOW, OVERLAP)
    expected = sum(
        len(window_starts(upper - lower, USER_WINDOW, step))
        for _, _, length in experiments()
        for segment in user_segments_of(length, split)
        for lower, upper in (part_of_segment(*segment, part) for part in range(3))
    )
    assert total == expected
    every_window = np.concatenate([origins(bundle, name) for name in SPLIT_NAMES])
    uses_unlabelled = (every_window[..., 0] >= 700).any()  # samples 700+ are unlabelled
    uses_transitions = ((every_window[..., 0] >= 100) & (every_window[..., 0] < 160)).any()
    assert uses_unlabelled == uses_transitions == (split == "recording")


@pytest.mark.parametrize("split", ["bout", "recording"])
def test_train_overlap_densifies_train_only_and_keeps_val_test_identical(raw_root: Path, split: str) -> None:
    kwargs = {"window": USER_WINDOW, "overlap": OVERLAP, "split": split}
    plain = load_hapt_user(str(raw_root), **kwargs)
    dense = load_hapt_user(str(raw_root), train_overlap=0.875, **kwargs)
    for name in ("val", "test"):
        for plain_tensor, dense_tensor in zip(
            getattr(plain, name).tensors, getattr(dense, name).tensors, strict=True
        ):
            assert torch.equal(plain_tensor, dense_tensor)
    assert dense.normalization == plain.normalization
    lengths = {experiment: length for experiment, _, length in experiments()}
    train = origins(dense, "train")
    expected = sum(
        len(window_starts(upper - lower, USER_WINDOW, window_step(USER_WINDOW, 0.875)))
        for _, _, length in experiments()
        for lower, upper in (part_of_segment(*seg, 0) for seg in user_segments_of(length, split))
    )
    assert len(train) == expected > 3 * len(plain.train)
    for window in train:  # every train window lies inside the train part of its segment: no val/test time
        lower, upper = next(
            part_of_segment(*seg, 0)
            for seg in user_segments_of(lengths[window[0, 2]], split)
            if seg[0] <= window[0, 0] < seg[1]
        )
        assert lower <= window[0, 0] and window[-1, 0] < upper
    held_out = {(w[0, 2], s) for name in ("val", "test") for w in origins(plain, name) for s in w[:, 0]}
    assert not {(w[0, 2], s) for w in train for s in w[:, 0]} & held_out


def test_train_overlap_is_checked(raw_root: Path) -> None:
    with pytest.raises(ValueError, match="overlap"):
        load_hapt_user(str(raw_root), window=USER_WINDOW, train_overlap=1.0)


def test_activities_keep_only_the_chosen_bouts(raw_root: Path) -> None:
    kwargs = {"window": USER_WINDOW, "overlap": OVERLAP}
    walking = load_hapt_user(str(raw_root), activities=[1], **kwargs)
    every = load_hapt_user(str(raw_root), **kwargs)
    present = load_hapt_user(str(raw_root), activities=[1, 4, 5], **kwargs)  # every basic activity there is
    first, last = SEGMENTS[0][1] - 1, SEGMENTS[0][2] - 1  # activity 1: samples 0..99 (0-based, inclusive)
    for name in SPLIT_NAMES:
        windows = origins(walking, name)
        assert len(windows) and ((windows[..., 0] >= first) & (windows[..., 0] <= last)).all()
        assert set(windows[:, 0, 1]) == set(USERS)
        assert 0 < len(windows) < len(getattr(every, name)) / 3
        for tensor, same in zip(getattr(present, name).tensors, getattr(every, name).tensors, strict=True):
            assert torch.equal(tensor, same)


def test_activities_are_checked(raw_root: Path) -> None:
    for bad in ([], [0], [7], [1, 12]):
        with pytest.raises(ValueError, match=r"activities must be a non-empty list of basic activity ids"):
            load_hapt_user(str(raw_root), window=USER_WINDOW, activities=bad)
    with pytest.raises(ValueError, match=r"needs a bout-based split, not 'recording'"):
        load_hapt_user(str(raw_root), window=USER_WINDOW, activities=[1], split="recording")


def test_activity_bouts_are_the_maximal_basic_activity_runs() -> None:
    labels = np.array([-1, 1, 1, 7, 7, 4, 4, 4, 5, -1, 5, 5, 12])
    assert activity_bouts(labels) == [(1, 3), (5, 8), (8, 9), (10, 12)]
    assert activity_bouts(np.zeros(0, dtype=np.int64)) == []


def test_unknown_user_split_is_rejected(raw_root: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"split must be one of \('bout', 'recording', 'cross_recording', 'time_folds'\).*'activity'",
    ):
        load_hapt_user(str(raw_root), split="activity")


@pytest.mark.parametrize("split", ["bout", "recording"])
def test_windows_are_normalised_with_training_statistics(raw_root: Path, split: str) -> None:
    bundle = load_hapt_user(str(raw_root), window=USER_WINDOW, overlap=OVERLAP, split=split)
    train = bundle.train.tensors[0].double()
    np.testing.assert_allclose(train.mean(dim=(0, 1)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(dim=(0, 1), correction=0).numpy(), 1, atol=1e-5)
    assert bundle.test.tensors[0][..., 0].mean() > 0.5  # later samples: larger acc-x than the training part


def test_limit_caps_every_split(raw_root: Path) -> None:
    bundle = load_hapt_activity(str(raw_root), window=WINDOW, val_users=[3], test_users=[8], limit=10, seed=5)
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [10, 10, 10]


def test_split_users_arguments_are_checked() -> None:
    users = list(range(1, 31))
    default = split_users(users, None, TEST_USERS, 4, seed=0)
    assert [len(default[s]) for s in ("train", "val", "test")] == [17, 4, 9]
    assert sorted(default["train"] + default["val"] + default["test"]) == users
    assert default == split_users(users, None, TEST_USERS, 4, seed=0)
    assert default["val"] != split_users(users, None, TEST_USERS, 4, seed=1)["val"]
    with pytest.raises(ValueError, match="overlap"):
        split_users(users, [2, 3], TEST_USERS, 4, seed=0)
    with pytest.raises(ValueError, match=r"test_users \[31\] are not in the data"):
        split_users(users, None, [31], 4, seed=0)


# --- the real bundled pickle ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_activity() -> DatasetBundle:
    return load_hapt_activity()


@pytest.fixture(scope="module")
def real_user() -> DatasetBundle:
    return load_hapt_user()


def test_real_pickle_has_61_recordings_of_30_users_in_g_and_rad_per_s() -> None:
    recordings, source = read_recordings()
    assert source == bundled_pickle_path()
    assert len(recordings) == 61 and {r.user for r in recordings} == set(range(1, 31))
    assert all(r.signals.dtype == np.float32 and r.signals.shape == (len(r.labels), 6) for r in recordings)
    labels = np.concatenate([r.labels for r in recordings])
    assert set(np.unique(labels).tolist()) == {-1, *range(1, 13)}
    acc = np.concatenate([r.signals[:, :3] for r in recordings])
    assert np.median(np.linalg.norm(acc, axis=1)) == pytest.approx(1.0, abs=0.05)  # gravity: acc is in g


def test_real_activity_splits_by_user_with_all_classes(real_activity: DatasetBundle) -> None:
    assert real_activity.input_shape == (128, 6) and real_activity.num_classes == 6
    for split in (real_activity.train, real_activity.val, real_activity.test):
        windows, labels = split.tensors
        assert windows.dtype == torch.float32 and labels.dtype == torch.int64
        assert torch.equal(torch.unique(labels), torch.arange(6))
    train = real_activity.train.tensors[0].double()
    np.testing.assert_allclose(train.mean(dim=(0, 1)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(dim=(0, 1), correction=0).numpy(), 1, atol=1e-5)
    test_mean = real_activity.test.tensors[0].double().mean(dim=(0, 1))
    assert test_mean.abs().max() > 1e-2  # test users were normalised with the training users' statistics


def test_real_user_identification_covers_30_users_in_each_split(real_user: DatasetBundle) -> None:
    sizes = [len(real_user.train), len(real_user.val), len(real_user.test)]
    # every bout part wastes its last partial window, the short val/test parts proportionally more than train
    assert 4 < sizes[0] / sizes[2] < 7 and abs(sizes[1] - sizes[2]) <= 0.02 * sizes[2]
    for split in (real_user.train, real_user.val, real_user.test):
        assert torch.equal(torch.unique(split.tensors[1]), torch.arange(30))


def test_real_gait_identification_has_every_user_in_each_split(real_user: DatasetBundle) -> None:
    gait = load_hapt_user(activities=[1, 2, 3])  # the deepsense_hapt_user experiment's walking-type bouts
    for name in SPLIT_NAMES:
        split, every = getattr(gait, name), getattr(real_user, name)
        assert torch.equal(torch.unique(split.tensors[1]), torch.arange(30))
        assert 0.2 < len(split) / len(every) < 0.5  # walking-type bouts: about a third of the windows


def test_real_bouts_give_every_activity_windows_in_every_split() -> None:
    recordings, _ = read_recordings()
    segments = user_segments(recordings, "bout")
    for recording, start, end in segments:
        activity = recording.labels[start]
        assert 1 <= activity <= 6 and (recording.labels[start:end] == activity).all()
        assert start == 0 or recording.labels[start - 1] != activity  # maximal run
        assert end == len(recording.labels) or recording.labels[end] != activity
    for part in range(3):
        with_windows = [(r, a) for r, a, e in segments if np.diff(part_of_segment(a, e, part))[0] >= 128]
        assert {int(r.labels[a]) for r, a in with_windows} == set(range(1, 7))
        assert {r.user for r, _ in with_windows} == set(range(1, 31))


# --- bad input: every error is a DataError naming the file -------------------------------------------------


def copy_raw(raw_root: Path, target: Path) -> Path:
    (target / "RawData").mkdir(parents=True)
    for file in (raw_root / "RawData").iterdir():
        (target / "RawData" / file.name).write_bytes(file.read_bytes())
    return target


def assert_data_error(root: Path, match: str, named: Path) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_hapt_activity(str(root), window=WINDOW, val_users=[3], test_users=[8])
    assert str(named) in str(info.value)


def test_missing_root_is_reported(tmp_path: Path) -> None:
    assert_data_error(tmp_path / "nowhere", "does not exist", tmp_path / "nowhere")


def test_missing_labels_file_is_reported(raw_root: Path, tmp_path: Path) -> None:
    root = copy_raw(raw_root, tmp_path / "hapt")
    (root / "RawData" / "labels.txt").unlink()
    assert_data_error(root, "does not exist", root / "RawData" / "labels.txt")


def test_folder_without_recordings_is_reported(tmp_path: Path) -> None:
    assert_data_error(tmp_path, "no acc_expXX_userYY.txt files", tmp_path)


def test_acc_and_gyro_of_different_lengths_are_reported(raw_root: Path, tmp_path: Path) -> None:
    root = copy_raw(raw_root, tmp_path / "hapt")
    gyro = root / "RawData" / "gyro_exp01_user01.txt"
    gyro.write_text("\n".join(gyro.read_text().splitlines()[:-5]) + "\n")
    assert_data_error(root, "has 728 samples but", gyro)


def test_unparseable_and_non_finite_text_is_reported(raw_root: Path, tmp_path: Path) -> None:
    root = copy_raw(raw_root, tmp_path / "hapt")
    acc = root / "RawData" / "acc_exp03_user02.txt"
    acc.write_text(acc.read_text().replace("e+00", "e+00 oops", 1))
    assert_data_error(root, "could not be parsed as numbers", acc)
    acc.write_text("nan 0 0\n" * 800)
    assert_data_error(root, "NaN or infinite", acc)


def test_label_segments_out_of_range_or_unknown_are_reported(raw_root: Path, tmp_path: Path) -> None:
    root = copy_raw(raw_root, tmp_path / "hapt")
    labels = root / "RawData" / "labels.txt"
    labels.write_text(labels.read_text() + "1 1 5 700 9000\n")
    assert_data_error(root, "segment 700-9000 for experiment 1 user 1", labels)
    labels.write_text("1 1 13 1 10\n")
    assert_data_error(root, "activity label 13", labels)


def test_truncated_pickle_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "HAPT.pkl.gz"
    broken.write_bytes(bundled_pickle_path().read_bytes()[:200_000])
    assert_data_error(broken, "truncated or corrupt", broken)


def write_gzip_pickle(path: Path, data: object) -> Path:
    with gzip.open(path, "wb") as file:
        pickle.dump(data, file, protocol=2)
    return path


def test_pickles_of_the_wrong_shape_are_reported(tmp_path: Path) -> None:
    as_list = write_gzip_pickle(tmp_path / "list.pkl.gz", [1, 2])
    assert_data_error(as_list, "not a dict of lists", as_list)
    not_frames = write_gzip_pickle(tmp_path / "frames.pkl.gz", {1: [{"acc-x": [0.0]}]})
    assert_data_error(not_frames, "not a DataFrame in the expected pandas block layout", not_frames)
    bad_user = write_gzip_pickle(tmp_path / "user.pkl.gz", {31: []})
    assert_data_error(bad_user, "user 31", bad_user)
    foreign = write_gzip_pickle(tmp_path / "foreign.pkl.gz", {1: [OrderedDict()]})
    assert_data_error(foreign, "global 'collections.OrderedDict' is not allowed", foreign)
