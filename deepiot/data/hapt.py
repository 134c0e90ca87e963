"""HAPT tasks: activity recognition (split by user) and user identification (split by time).

Both loaders also give cross-validation folds (`fold`, `num_folds`); see their docstrings for each protocol.

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
USER_SPLITS = ("bout", "recording", "cross_recording", "time_folds")  # load_hapt_user's split protocols
FOLD_SPLITS = ("cross_recording", "time_folds")  # the user splits that take a fold
NUM_RECORDING_FOLDS = 2  # cross_recording: train on one recording session of every user, test on the other
SPLIT_NAMES = ("train", "val", "test")
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
    fold: int | None = None,
    num_folds: int = 5,
) -> DatasetBundle:
    """Activity recognition on [N, window, 6] windows, split by user so no user is in two splits.

    A window is kept only if all its samples carry one label among the chosen activities (the 6 basic ones, or
    all 12 with `include_transitions`); windows spanning two activities or unlabelled samples are dropped.
    Validation users are `val_users`, or `num_val_users` of the non-test users drawn with `seed` (default:
    21 UCI HAR training users -> 17 train + 4 val, 9 test). `limit` caps each split (subset drawn with `seed`).

    Leave-subjects-out folds: with `fold` (0..num_folds-1) the test users are fold group `fold` and
    `test_users` is ignored. The groups are a fixed partition that does not depend on `seed`: the users sorted
    by id and dealt round-robin, group f = sorted users f, f + num_folds, f + 2 num_folds, ... (k=5 on HAPT:
    group 0 = users 1, 6, 11, 16, 21, 26; 6 test users per fold), so the k test sets are disjoint and cover
    every user once. Validation users (`val_users`, or `num_val_users` drawn with `seed`) come from the other
    users and the rest train. `fold=None` keeps the fixed UCI split above.
    """
    check_limit(limit)
    step = window_step(window, overlap)
    if fold is not None:
        check_fold(fold, num_folds, minimum_folds=2, what="load_hapt_activity")
    recordings, source = read_recordings(root)
    known = sorted({r.user for r in recordings})
    if fold is not None:
        test_users = activity_fold_users(known, fold, num_folds)
    users = split_users(known, val_users, test_users, num_val_users, seed)
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
    fold: int | None = None,
    num_folds: int = 5,
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
    the same whatever `train_overlap`. `activities` (with a bout-based split: "bout", "cross_recording",
    "time_folds") keeps only the bouts of these activities (1..6, see ACTIVITY_NAMES), e.g. (1, 2, 3) for
    identification by gait on the walking-type bouts, where a user's identity shows in how they move rather than
    in how the phone sits on a still body. `limit` caps each split (drawn with `seed`).

    Folds (`fold` is needed by these two splits and refused by the others):

    `split="cross_recording"`, `fold` 0 or 1 (`num_folds` ignored: there are two sessions): every user did the
    protocol twice, and for many users the phone sits at another tilt in the second session (the gravity
    direction while standing moves by up to ~0.3 g on an axis). Session 1 is a user's first recording (lowest experiment id), session 2 the rest (user 10's
    second protocol is split over two files, experiments 20 (postures) and 21 (walking), which both go to
    session 2). Fold 0 trains on session 1 and tests on session 2; fold 1 the reverse. Bouts are used as in
    "bout"; the training session's bouts give train (their first 1 - `val_frac` samples) and val (their last
    `val_frac`), the test session's bouts give test whole; `train_frac` is ignored.

    `split="time_folds"`, `fold` in [0, `num_folds`) with `num_folds` >= 3: each user's bouts are laid end to
    end (recording order, then time) and that timeline is cut into `num_folds` contiguous blocks of equal
    length. Block `fold` is test, the next block (`fold` + 1, cyclically) is val, the others train (k=5:
    60/20/20 as "bout"). At every boundary between blocks of different splits `window` samples are dropped
    (half on each side), so test and val windows are at least a window away from windows of any other split;
    windows are cut inside a block and a bout, never across. `train_frac`/`val_frac` are ignored.
    """
    check_limit(limit)
    step = window_step(window, overlap)
    train_step = step if train_overlap is None else window_step(window, train_overlap)
    if split not in USER_SPLITS:
        raise ValueError(f"split must be one of {USER_SPLITS} for load_hapt_user, got {split!r}")
    if split == "cross_recording":
        if not 0 <= val_frac < 1:
            raise ValueError(f"need 0 <= val_frac < 1 with split='cross_recording', got {val_frac}")
    elif split != "time_folds":
        check_time_fractions(train_frac, val_frac)
    check_activities(activities, split)
    check_user_fold(split, fold, num_folds)
    recordings, source = read_recordings(root)
    pieces = user_split_pieces(recordings, split, activities, train_frac, val_frac, fold, num_folds, window)
    splits = {name: piece_windows(pieces[name], window, step) for name in SPLIT_NAMES}
    statistics_inputs = splits["train"][0]  # [N, window, 6] train windows at `overlap`
    if train_step != step:
        splits["train"] = piece_windows(pieces["train"], window, train_step)
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


def check_fold(fold: int, num_folds: int, minimum_folds: int, what: str) -> None:
    """Reject a fold outside [0, num_folds) or fewer than `minimum_folds` folds."""
    if (
        isinstance(num_folds, bool)
        or not isinstance(num_folds, int | np.integer)
        or num_folds < minimum_folds
    ):
        raise ValueError(f"num_folds must be an integer >= {minimum_folds} for {what}, got {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {num_folds}) for {what}, got {fold!r}")


def check_user_fold(split: str, fold: int | None, num_folds: int) -> None:
    """Reject a missing fold for the fold splits, a fold for the others, and folds out of range."""
    if split not in FOLD_SPLITS:
        if fold is not None:
            raise ValueError(f"fold={fold!r} needs split in {FOLD_SPLITS}, got split={split!r}")
        return
    if fold is None:
        raise ValueError(f"split={split!r} needs a fold (an integer), got fold=None")
    if split == "cross_recording":
        check_fold(fold, NUM_RECORDING_FOLDS, NUM_RECORDING_FOLDS, "split='cross_recording' (2 sessions)")
    else:
        check_fold(fold, num_folds, 3, "split='time_folds' (a test, a val and a train block)")


def activity_fold_users(users: Sequence[int], fold: int, num_folds: int) -> tuple[int, ...]:
    """Test users of leave-subjects-out fold `fold`: the sorted users dealt round-robin into `num_folds` groups."""
    if len(users) < num_folds:
        raise ValueError(f"num_folds={num_folds} is more than the {len(users)} users {list(users)}")
    return tuple(int(user) for user in sorted(users)[fold::num_folds])


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
    if split == "recording":
        raise ValueError(
            f"activities={sorted(chosen)} needs a bout-based split, not 'recording' (whole recordings mix "
            f"activities), got {split!r}"
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


def user_split_pieces(
    recordings: list[Recording],
    split: str,
    activities: Sequence[int] | None,
    train_frac: float,
    val_frac: float,
    fold: int | None,
    num_folds: int,
    window: int,
) -> dict[str, list[Segment]]:
    """Split name -> (recording, start, end) pieces whose windows make that split (see load_hapt_user)."""
    if split == "cross_recording":
        return cross_recording_pieces(recordings, activities, val_frac, int(fold))
    segments = user_segments(recordings, "recording" if split == "recording" else "bout", activities)
    if split == "time_folds":
        return time_fold_pieces(segments, int(fold), num_folds, gap=window)
    pieces: dict[str, list[Segment]] = {}
    for part, name in enumerate(SPLIT_NAMES):
        pieces[name] = []
        for recording, start, end in segments:
            bounds = time_bounds(end - start, train_frac, val_frac)
            pieces[name].append((recording, start + bounds[part], start + bounds[part + 1]))
    return pieces


def recording_sessions(recordings: list[Recording]) -> dict[int, tuple[list[Recording], list[Recording]]]:
    """User -> (session 1, session 2): the first recording (lowest experiment id), then all the others."""
    by_user: dict[int, list[Recording]] = {}
    for recording in recordings:
        by_user.setdefault(recording.user, []).append(recording)
    sessions = {}
    for user, own in sorted(by_user.items()):
        if len(own) < 2:
            raise ValueError(
                f"split='cross_recording' needs at least two recordings per user; user {user} has {len(own)}"
            )
        own = sorted(own, key=lambda recording: recording.experiment)
        sessions[user] = (own[:1], own[1:])
    return sessions


def cross_recording_pieces(
    recordings: list[Recording], activities: Sequence[int] | None, val_frac: float, fold: int
) -> dict[str, list[Segment]]:
    """Fold 0: train/val on session-1 bouts, test on session-2 bouts; fold 1 the reverse."""
    pieces: dict[str, list[Segment]] = {name: [] for name in SPLIT_NAMES}
    for first, second in recording_sessions(recordings).values():
        trained, tested = (first, second) if fold == 0 else (second, first)
        for recording, start, end in user_segments(trained, "bout", activities):
            cut = start + round((end - start) * (1 - val_frac))
            pieces["train"].append((recording, start, cut))
            pieces["val"].append((recording, cut, end))
        pieces["test"] += user_segments(tested, "bout", activities)
    return pieces


def time_fold_roles(fold: int, num_folds: int) -> list[str]:
    """Split of each block: `fold` is test, the next block (cyclically) val, the others train."""
    roles = ["train"] * num_folds
    roles[fold], roles[(fold + 1) % num_folds] = "test", "val"
    return roles


def time_fold_pieces(
    segments: list[Segment], fold: int, num_folds: int, gap: int
) -> dict[str, list[Segment]]:
    """Every user's segments laid end to end, cut into `num_folds` equal blocks with `gap` samples dropped at
    each boundary between blocks of different splits (gap // 2 before it, the rest after it)."""
    pieces: dict[str, list[Segment]] = {name: [] for name in SPLIT_NAMES}
    roles = time_fold_roles(fold, num_folds)
    for user in sorted({recording.user for recording, _, _ in segments}):
        own = [segment for segment in segments if segment[0].user == user]
        offsets = np.concatenate([[0], np.cumsum([end - start for _, start, end in own])]).tolist()
        bounds = [round(offsets[-1] * block / num_folds) for block in range(num_folds + 1)]
        for block, role in enumerate(roles):
            lower, upper = bounds[block], bounds[block + 1]
            if block > 0 and roles[block - 1] != role:
                lower += gap - gap // 2
            if block < num_folds - 1 and roles[block + 1] != role:
                upper -= gap // 2
            for (recording, start, end), offset in zip(own, offsets, strict=False):
                first, last = max(lower, offset), min(upper, offset + end - start)
                if first < last:
                    pieces[role].append((recording, start + first - offset, start + last - offset))
    return pieces


def piece_starts(pieces: list[Segment], window: int, step: int) -> list[np.ndarray]:
    """Start samples (in its recording) of the windows cut inside each piece."""
    return [start + window_starts(end - start, window, step) for _, start, end in pieces]


def piece_windows(pieces: list[Segment], window: int, step: int) -> Split:
    """Windows cut inside every piece, labelled user - 1."""
    inputs, targets = [_empty_windows(window)], [np.zeros(0, dtype=np.int64)]
    for (recording, _, _), starts in zip(pieces, piece_starts(pieces, window, step), strict=True):
        inputs.append(cut_windows(recording.signals, starts, window))
        targets.append(np.full(len(starts), recording.user - 1, dtype=np.int64))
    return np.concatenate(inputs), np.concatenate(targets)


def piece_origins(pieces: list[Segment], window: int, step: int) -> np.ndarray:
    """[N, 3] (user, experiment, start sample) of the windows piece_windows cuts, in the same order."""
    rows = [np.zeros((0, 3), dtype=np.int64)]
    for (recording, _, _), starts in zip(pieces, piece_starts(pieces, window, step), strict=True):
        rows.append(
            np.stack(
                [np.full_like(starts, recording.user), np.full_like(starts, recording.experiment), starts], 1
            )
        )
    return np.concatenate(rows).astype(np.int64)


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
