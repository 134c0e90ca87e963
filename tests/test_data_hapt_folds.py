"""HAPT cross-validation folds on the real bundled data: leave-subjects-out activity folds, and the
cross_recording and time_folds user-identification splits (plus the leakage check of the default bout split)."""

from __future__ import annotations

import numpy as np
import pytest

from deepiot.data import DatasetBundle, load_hapt_activity, load_hapt_user
from deepiot.data.hapt import (
    NUM_BASIC_ACTIVITIES,
    SPLIT_NAMES,
    activity_fold_users,
    activity_windows,
    piece_origins,
    recording_sessions,
    split_users,
    user_split_pieces,
    window_step,
)
from deepiot.data.hapt_source import Recording, read_recordings

WINDOW, STEP = 128, 64  # the loaders' defaults: 128 samples, 50% overlap
GAIT = (1, 2, 3)  # the deepsense_hapt_user experiment's walking-type bouts
USERS = set(range(1, 31))


@pytest.fixture(scope="module")
def recordings() -> list[Recording]:
    return read_recordings()[0]


def origins(recordings: list[Recording], split: str, fold: int | None, activities=GAIT, num_folds: int = 5):
    """Split name -> [N, 3] (user, experiment, start) of the windows load_hapt_user cuts at 50% overlap."""
    pieces = user_split_pieces(recordings, split, activities, 0.6, 0.2, fold, num_folds, WINDOW)
    return {name: piece_origins(pieces[name], WINDOW, STEP) for name in SPLIT_NAMES}


def sample_masks(where: np.ndarray, recordings: list[Recording], reach: int = 0) -> dict[int, np.ndarray]:
    """Experiment -> boolean mask of the samples the windows cover, widened by `reach` samples on each side."""
    lengths = {r.experiment: len(r.labels) for r in recordings}
    masks: dict[int, np.ndarray] = {}
    for _, experiment, start in where:
        mask = masks.setdefault(int(experiment), np.zeros(lengths[int(experiment)], dtype=bool))
        mask[max(0, start - reach) : start + WINDOW + reach] = True
    return masks


def shared_samples(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> int:
    return sum(int((mask & b[e]).sum()) for e, mask in a.items() if e in b)


def assert_loader_matches(
    bundle: DatasetBundle, where: dict[str, np.ndarray], recordings: list[Recording]
) -> None:
    """The loader's windows are, in order, the recordings' samples at `where` (checked on a sample of windows)."""
    by_experiment = {r.experiment: r for r in recordings}
    mean, std = np.array(bundle.normalization["mean"]), np.array(bundle.normalization["std"])
    rng = np.random.default_rng(0)
    for name in SPLIT_NAMES:
        inputs, labels = (t.numpy() for t in getattr(bundle, name).tensors)
        assert len(inputs) == len(where[name])
        np.testing.assert_array_equal(labels, where[name][:, 0] - 1)
        for i in rng.choice(len(inputs), size=min(40, len(inputs)), replace=False):
            _, experiment, start = where[name][i]
            raw = inputs[i].astype(np.float64) * std + mean
            np.testing.assert_allclose(
                raw, by_experiment[experiment].signals[start : start + WINDOW], atol=1e-4
            )


def assert_inside_chosen_bouts(where: np.ndarray, recordings: list[Recording], activities) -> None:
    """Every window lies in one run of one chosen activity (so it crosses no bout boundary)."""
    by_experiment = {r.experiment: r for r in recordings}
    for _, experiment, start in where:
        labels = by_experiment[experiment].labels[start : start + WINDOW]
        assert (labels == labels[0]).all() and labels[0] in activities


# --- activity: leave-subjects-out ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_folds", [2, 3, 5, 7])
def test_activity_folds_partition_the_users(num_folds: int) -> None:
    users = sorted(USERS)
    tests = [activity_fold_users(users, fold, num_folds) for fold in range(num_folds)]
    assert sorted(u for test in tests for u in test) == users  # each user in exactly one test set
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    if num_folds == 5:
        assert [len(test) for test in tests] == [6] * 5 and tests[0] == (1, 6, 11, 16, 21, 26)
    for fold, test in enumerate(tests):
        for seed in (0, 1):  # the test groups do not depend on the seed; val does
            split = split_users(users, None, test, 4, seed)
            assert split["test"] == test and len(split["val"]) == 4
            assert sorted(split["train"] + split["val"] + split["test"]) == users
            assert not set(split["val"]) & set(test) and not set(split["train"]) & set(test)
        assert activity_fold_users(users, fold, num_folds) == test


def test_activity_fold_loads_the_fold_users_windows(recordings: list[Recording]) -> None:
    bundle = load_hapt_activity(fold=2, seed=3)
    users = split_users(sorted(USERS), None, activity_fold_users(sorted(USERS), 2, 5), 4, seed=3)
    assert users["test"] == (3, 8, 13, 18, 23, 28)
    mean, std = np.array(bundle.normalization["mean"]), np.array(bundle.normalization["std"])
    seen: list[set[bytes]] = []
    for name in SPLIT_NAMES:
        expected, labels = activity_windows(
            [r for r in recordings if r.user in users[name]], WINDOW, STEP, NUM_BASIC_ACTIVITIES
        )
        inputs, targets = (t.numpy() for t in getattr(bundle, name).tensors)
        np.testing.assert_array_equal(targets, labels)
        np.testing.assert_allclose(inputs.astype(np.float64) * std + mean, expected, atol=1e-4)
        seen.append({window.tobytes() for window in expected})
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])  # no shared window


def test_activity_fold_arguments_are_checked() -> None:
    for fold, num_folds in ((5, 5), (-1, 5), (0, 1), (1.5, 5)):
        with pytest.raises(ValueError, match="fold"):
            load_hapt_activity(fold=fold, num_folds=num_folds)
    with pytest.raises(ValueError, match="more than the 30 users"):
        activity_fold_users(sorted(USERS), 0, 31)


# --- user identification: cross_recording ------------------------------------------------------------------


def test_every_user_has_two_sessions_and_user_10_a_split_second_one(recordings: list[Recording]) -> None:
    sessions = recording_sessions(recordings)
    assert set(sessions) == USERS and len(recordings) == 61
    assert all(len(first) == 1 for first, _ in sessions.values())
    assert {user: len(second) for user, (_, second) in sessions.items() if len(second) != 1} == {10: 2}
    experiments = [r.experiment for first, second in sessions.values() for r in first + second]
    assert experiments == list(range(1, 62))  # the pickle keeps the official experiment order


@pytest.mark.parametrize("activities", [GAIT, None])
def test_cross_recording_trains_and_tests_on_different_sessions(
    recordings: list[Recording], activities
) -> None:
    sessions = recording_sessions(recordings)
    folds = [origins(recordings, "cross_recording", fold, activities) for fold in (0, 1)]
    for fold, where in enumerate(folds):
        for name in SPLIT_NAMES:
            assert set(where[name][:, 0].tolist()) == USERS  # every user in every split
            assert_inside_chosen_bouts(where[name], recordings, activities or range(1, 7))
        held = {r.experiment for first, second in sessions.values() for r in (first, second)[1 - fold]}
        assert set(where["train"][:, 1].tolist()) <= {e for e in range(1, 62) if e not in held}
        assert set(where["val"][:, 1].tolist()) <= set(where["train"][:, 1].tolist())
        assert set(where["test"][:, 1].tolist()) <= held
        train = sample_masks(np.concatenate([where["train"], where["val"]]), recordings)
        assert not set(train) & set(sample_masks(where["test"], recordings))
        assert (
            shared_samples(sample_masks(where["train"], recordings), sample_masks(where["val"], recordings))
            == 0
        )
    # fold 1 swaps the sessions: its test windows are fold 0's training time and the reverse
    fold0_train = {e for e in np.concatenate([folds[0]["train"], folds[0]["val"]])[:, 1]}
    assert set(folds[1]["test"][:, 1].tolist()) == fold0_train
    assert set(folds[0]["test"][:, 1].tolist()) == set(
        np.concatenate([folds[1]["train"], folds[1]["val"]])[:, 1]
    )


def test_cross_recording_val_is_the_end_of_every_training_bout(recordings: list[Recording]) -> None:
    pieces = user_split_pieces(recordings, "cross_recording", GAIT, 0.6, 0.2, 0, 5, WINDOW)
    assert len(pieces["train"]) == len(pieces["val"])
    for (recording, start, cut), (same, val_start, end) in zip(pieces["train"], pieces["val"], strict=True):
        assert same is recording and cut == val_start == start + round(0.8 * (end - start))


def test_cross_recording_loader_matches_its_pieces(recordings: list[Recording]) -> None:
    bundle = load_hapt_user(split="cross_recording", fold=1, activities=list(GAIT))
    assert_loader_matches(bundle, origins(recordings, "cross_recording", 1), recordings)


def test_sessions_need_two_recordings_per_user(recordings: list[Recording]) -> None:
    with pytest.raises(ValueError, match="user 1 has 1"):
        recording_sessions([r for r in recordings if r.experiment != 2])


# --- user identification: time_folds -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def time_folds(recordings: list[Recording]) -> list[dict[str, np.ndarray]]:
    return [origins(recordings, "time_folds", fold) for fold in range(5)]


def test_time_folds_keep_every_user_in_every_split(time_folds, recordings: list[Recording]) -> None:
    for where in time_folds:
        for name in SPLIT_NAMES:
            assert set(where[name][:, 0].tolist()) == USERS
            assert_inside_chosen_bouts(where[name], recordings, GAIT)
        sizes = [len(where[name]) for name in SPLIT_NAMES]
        assert 2.5 < sizes[0] / sizes[2] < 3.5 and 0.8 < sizes[1] / sizes[2] < 1.25  # about 60/20/20


def test_time_folds_keep_a_window_of_samples_between_splits(time_folds, recordings: list[Recording]) -> None:
    for where in time_folds:
        held_out = {name: sample_masks(where[name], recordings, reach=WINDOW) for name in ("val", "test")}
        train = sample_masks(where["train"], recordings)
        test = sample_masks(where["test"], recordings)
        # no sample of a train or val window lies within WINDOW samples of a test window, nor train of val
        assert shared_samples(held_out["test"], train) == 0
        assert shared_samples(held_out["test"], sample_masks(where["val"], recordings)) == 0
        assert shared_samples(held_out["val"], train) == 0
        assert test  # the test block is not empty


def test_time_fold_test_blocks_are_disjoint_and_val_is_the_next_block(time_folds, recordings) -> None:
    masks = [sample_masks(where["test"], recordings) for where in time_folds]
    for a in range(5):
        for b in range(a + 1, 5):
            assert shared_samples(masks[a], masks[b]) == 0
        np.testing.assert_array_equal(time_folds[a]["val"], time_folds[(a + 1) % 5]["test"])


def test_time_folds_loader_matches_its_pieces_and_densifies_train_only(recordings: list[Recording]) -> None:
    bundle = load_hapt_user(split="time_folds", fold=3, activities=list(GAIT), train_overlap=0.875)
    where = origins(recordings, "time_folds", 3)
    pieces = user_split_pieces(recordings, "time_folds", GAIT, 0.6, 0.2, 3, 5, WINDOW)
    where["train"] = piece_origins(pieces["train"], WINDOW, window_step(WINDOW, 0.875))
    assert_loader_matches(bundle, where, recordings)


def test_user_fold_arguments_are_checked() -> None:
    bad = [
        ({"split": "time_folds"}, "needs a fold"),
        ({"split": "cross_recording"}, "needs a fold"),
        ({"split": "time_folds", "fold": 5}, r"fold must be an integer in \[0, 5\)"),
        ({"split": "time_folds", "fold": 0, "num_folds": 2}, "num_folds must be an integer >= 3"),
        ({"split": "cross_recording", "fold": 2}, r"fold must be an integer in \[0, 2\)"),
        ({"split": "bout", "fold": 0}, "needs split in"),
        ({"split": "recording", "fold": 1}, "needs split in"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            load_hapt_user(**kwargs)


# --- leakage check of the default bout split --------------------------------------------------------------------


def test_default_gait_bout_split_shares_no_sample_between_train_and_test(recordings: list[Recording]) -> None:
    """deepsense_hapt_user's data (walking-type bouts, train windows at 87.5% overlap): no shared samples."""
    pieces = user_split_pieces(recordings, "bout", GAIT, 0.6, 0.2, None, 5, WINDOW)
    train = sample_masks(piece_origins(pieces["train"], WINDOW, window_step(WINDOW, 0.875)), recordings)
    val = sample_masks(piece_origins(pieces["val"], WINDOW, STEP), recordings)
    test = sample_masks(piece_origins(pieces["test"], WINDOW, STEP), recordings)
    assert shared_samples(train, test) == shared_samples(train, val) == shared_samples(val, test) == 0
