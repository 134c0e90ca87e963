"""HAPT tasks: activity recognition (split by user) and user identification (split by time).

Windows are [T, C] = [window, 6] slices of one recording (channels acc-x, acc-y, acc-z, gyro-x, gyro-y, gyro-z);
the default 128 samples at 50 Hz is 2.56 s, with 50% overlap. See hapt_source for the data itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepiot.data.base import DatasetBundle
from deepiot.data.hapt_source import CHANNELS, NUM_USERS, UNLABELLED, Recording, read_recordings
from deepiot.data.prep import Split, check_limit, make_bundle

ACTIVITY_NAMES = [
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
    "STAND_TO_SIT", "SIT_TO_STAND", "SIT_TO_LIE", "LIE_TO_SIT", "STAND_TO_LIE", "LIE_TO_STAND",
]  # fmt: skip
NUM_BASIC_ACTIVITIES = 6
TEST_USERS = (2, 4, 9, 10, 12, 13, 18, 20, 24)  # the test users of the published UCI HAR split
USER_NAMES = [f"user{user:02d}" for user in range(1, NUM_USERS + 1)]
USER_SPLITS = ("bout", "recording")  # what load_hapt_user splits by time: activity bouts or whole recordings
Segment = tuple[Recording, int, int]  # (recording, start, end): samples [start, end) of one recording


def load_hapt_activity(
    root: str | None = None,
    window: int = 128,
    overlap: float = 0.5,
    include_transitions: bool = False,
    val_users: Sequence[int] | None = None,
    test_users: Sequence[int] = TEST_USERS,
    num_val_users: int = 4,
    seed: int = 0,
    limit: int | None = None,
) -> DatasetBundle:
    """Activity recognition on [N, window, 6] windows, split by user so no user is in two splits.

    A window is kept only if all its samples carry one label among the chosen activities (the 6 basic ones, or
    all 12 with `include_transitions`); windows spanning two activities or unlabelled samples are dropped.
    Validation users are `val_users`, or `num_val_users` of the non-test users drawn with `seed` (default:
    21 UCI HAR training users -> 17 train + 4 val, 9 test). `limit` caps each split (subset drawn with `seed`).
    """
    check_limit(limit)
    step = window_step(window, overlap)
    recordings, source = read_recordings(root)
    users = split_users(sorted({r.user for r in recordings}), val_users, test_users, num_val_users, seed)
    num_classes = len(ACTIVITY_NAMES) if include_transitions else NUM_BASIC_ACTIVITIES
    splits = {
        name: activity_windows([r for r in recordings if r.user in split], window, step, num_classes)
        for name, split in users.items()
    }
    class_names = ACTIVITY_NAMES[:num_classes]
    return make_bundle(
        "hapt_activity", splits, class_names, channel_axis=-1, source=str(source), limit=limit, seed=seed
    )


def load_hapt_user(
    root: str | None = None,
    window: int = 128,
    overlap: float = 0.5,
    train_overlap: float | None = None,
    train_frac: float = 0.6,
    val_frac: float = 0.2,
    split: str = "bout",
    activities: Sequence[int] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> DatasetBundle:
    """User identification (30 classes user01..user30) on [N, window, 6] windows, split by time.

    Time is split inside segments: each is cut into an earlier train part (`train_frac` of its samples), a val
    part (`val_frac`) and a later test part, and windows are cut inside each part, so none straddles a boundary.
    `split="bout"` (default) segments every recording into its activity bouts (maximal runs of one of the 6
    basic activities), so every split holds every activity of every user; unlabelled stretches and postural
    transitions are dropped (a transition, ~3 s, is too short to give a window in each part). `split="recording"`
    cuts whole recordings and uses all samples, but every HAPT recording follows one protocol (postures first,
    walking later), so its train part is mostly postures and its test part mostly walking: it measures
    identification across activities. `train_overlap` cuts the train part's windows denser than `overlap` (more
    training windows from the same time spans, none crossing into val/test); val/test keep `overlap`, and the
    statistics that normalise every split stay those of the train windows at `overlap`, so val/test tensors are
    the same whatever `train_overlap`. `activities` (with `split="bout"`) keeps only the bouts of these activities
    (1..6, see ACTIVITY_NAMES), e.g. (1, 2, 3) for identification by gait on the walking-type bouts, where a
    user's identity shows in how they move rather than in how the phone sits on a still body. `limit` caps
    each split (drawn with `seed`).
    """
    check_limit(limit)
    step = window_step(window, overlap)
    train_step = step if train_overlap is None else window_step(window, train_overlap)
    check_time_fractions(train_frac, val_frac)
    if split not in USER_SPLITS:
        raise ValueError(f"split must be one of {USER_SPLITS} for load_hapt_user, got {split!r}")
    check_activities(activities, split)
    recordings, source = read_recordings(root)
    segments = user_segments(recordings, split, activities)
    parts = [user_windows(segments, window, step, train_frac, val_frac, part) for part in range(3)]
    splits = dict(zip(("train", "val", "test"), parts, strict=True))
    statistics_inputs = splits["train"][0]  # [N, window, 6] train windows at `overlap`
    if train_step != step:
        splits["train"] = user_windows(segments, window, train_step, train_frac, val_frac, part=0)
    return make_bundle(
        "hapt_user",
        splits,
        USER_NAMES,
        channel_axis=-1,
        source=str(source),
        limit=limit,
        seed=seed,
        statistics_inputs=statistics_inputs if train_step != step else None,
    )


def check_activities(activities: Sequence[int] | None, split: str) -> None:
    """Reject activity ids that are not basic activities, an empty choice, or a choice with whole recordings."""
    if activities is None:
        return
    basic = range(1, NUM_BASIC_ACTIVITIES + 1)
    chosen = {int(activity) for activity in activities}
    if not chosen or not chosen <= set(basic):
        names = ", ".join(f"{i} {ACTIVITY_NAMES[i - 1]}" for i in basic)
        raise ValueError(
            f"activities must be a non-empty list of basic activity ids ({names}), got {list(activities)}"
        )
    if split != "bout":
        raise ValueError(
            f"activities={sorted(chosen)} needs split='bout' (whole recordings mix activities), got {split!r}"
        )


def window_step(window: int, overlap: float) -> int:
    """Samples between the starts of consecutive windows (at least 1)."""
    if window < 1 or not 0 <= overlap < 1:
        raise ValueError(f"need window >= 1 and 0 <= overlap < 1, got window={window}, overlap={overlap}")
    return max(1, round(window * (1 - overlap)))


def window_starts(length: int, window: int, step: int) -> np.ndarray:
    """Start indices of the windows that fit entirely in `length` samples."""
    return np.arange(0, length - window + 1, step)


def cut_windows(signals: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows [N, window, C] of `signals` [T, C] starting at `starts`."""
    return signals[starts[:, None] + np.arange(window)]  # [N, window] indices -> [N, window, C]


def window_labels(labels: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """The label all samples of each window share, or UNLABELLED where they differ."""
    changes = np.concatenate([[0], np.cumsum(labels[1:] != labels[:-1])])  # label changes up to each sample
    pure = changes[starts + window - 1] == changes[starts]
    return np.where(pure, labels[starts], UNLABELLED)


def activity_windows(recordings: list[Recording], window: int, step: int, num_classes: int) -> Split:
    """Single-activity windows of `recordings` with labels remapped from 1..num_classes to 0..num_classes-1."""
    inputs, targets = [_empty_windows(window)], [np.zeros(0, dtype=np.int64)]
    for recording in recordings:
        starts = window_starts(len(recording.labels), window, step)
        labels = window_labels(recording.labels, starts, window)
        keep = (labels >= 1) & (labels <= num_classes)
        inputs.append(cut_windows(recording.signals, starts[keep], window))
        targets.append(labels[keep] - 1)
    return np.concatenate(inputs), np.concatenate(targets)


def check_time_fractions(train_frac: float, val_frac: float) -> None:
    """Reject fractions that leave no train or no test part."""
    if not (train_frac > 0 and val_frac >= 0 and train_frac + val_frac < 1):
        raise ValueError(
            f"need 0 < train_frac, 0 <= val_frac, train_frac + val_frac < 1; got {train_frac}, {val_frac}"
        )


def time_bounds(length: int, train_frac: float, val_frac: float) -> list[int]:
    """Sample indices [0, train end, val end, length] that cut one segment into train/val/test parts."""
    return [0, round(length * train_frac), round(length * (train_frac + val_frac)), length]


def activity_bouts(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) sample ranges of the maximal runs of one basic activity (1..6) in `labels`."""
    if len(labels) == 0:
        return []
    changes = np.flatnonzero(labels[1:] != labels[:-1]) + 1  # first sample of every run but the first
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [len(labels)]])
    basic = (labels[starts] >= 1) & (labels[starts] <= NUM_BASIC_ACTIVITIES)
    return list(zip(starts[basic].tolist(), ends[basic].tolist(), strict=True))


def user_segments(
    recordings: list[Recording], split: str, activities: Sequence[int] | None = None
) -> list[Segment]:
    """The (recording, start, end) segments split by time: activity bouts (of `activities` only, if given), or
    whole recordings."""
    if split == "recording":
        return [(recording, 0, len(recording.labels)) for recording in recordings]
    return [
        (recording, start, end)
        for recording in recordings
        for start, end in activity_bouts(recording.labels)
        if activities is None or recording.labels[start] in activities
    ]


def user_windows(
    segments: list[Segment], window: int, step: int, train_frac: float, val_frac: float, part: int
) -> Split:
    """Windows of part `part` (0 train, 1 val, 2 test) of every segment, labelled user - 1."""
    inputs, targets = [_empty_windows(window)], [np.zeros(0, dtype=np.int64)]
    for recording, start, end in segments:
        bounds = [start + bound for bound in time_bounds(end - start, train_frac, val_frac)]
        starts = bounds[part] + window_starts(bounds[part + 1] - bounds[part], window, step)
        inputs.append(cut_windows(recording.signals, starts, window))
        targets.append(np.full(len(starts), recording.user - 1, dtype=np.int64))
    return np.concatenate(inputs), np.concatenate(targets)


def split_users(
    users: Sequence[int],
    val_users: Sequence[int] | None,
    test_users: Sequence[int],
    num_val_users: int,
    seed: int,
) -> dict[str, tuple[int, ...]]:
    """Disjoint train/val/test user sets; val users are drawn from the non-test users with `seed` if not given."""
    test = tuple(sorted(int(u) for u in test_users))
    _check_known(test, users, "test_users")
    if val_users is None:
        candidates = [u for u in users if u not in test]
        if not 0 <= num_val_users < len(candidates):
            raise ValueError(f"num_val_users={num_val_users} must leave training users among {candidates}")
        rng = np.random.default_rng(seed)
        val = tuple(sorted(int(u) for u in rng.choice(candidates, size=num_val_users, replace=False)))
    else:
        val = tuple(sorted(int(u) for u in val_users))
        _check_known(val, users, "val_users")
    if set(val) & set(test):
        raise ValueError(f"val_users {val} and test_users {test} overlap in {sorted(set(val) & set(test))}")
    train = tuple(u for u in users if u not in val and u not in test)
    if not train:
        raise ValueError(f"no training users left among {list(users)} after val {val} and test {test}")
    return {"train": train, "val": val, "test": test}


def _check_known(chosen: Sequence[int], users: Sequence[int], what: str) -> None:
    """Reject user ids absent from the data."""
    unknown = sorted(set(chosen) - set(users))
    if unknown:
        raise ValueError(f"{what} {unknown} are not in the data, whose users are {list(users)}")


def _empty_windows(window: int) -> np.ndarray:
    """A [0, window, 6] float32 array, so concatenating no recordings still gives the right shape."""
    return np.zeros((0, window, len(CHANNELS)), dtype=np.float32)
