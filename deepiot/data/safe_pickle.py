"""Read pickles without executing arbitrary code: only allow-listed globals may be referenced."""

from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from deepiot.data.errors import DataError

# Errors that mean "this file is truncated or corrupt" while decompressing or unpickling it.
CORRUPT_FILE_ERRORS = (pickle.UnpicklingError, EOFError, gzip.BadGzipFile, zlib.error)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to store bytes as latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# Globals that plain numpy arrays need, under the names written by numpy 1.x, numpy 2.x and Python 2.
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` resolves only the (module, name) pairs in `allowed`."""

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in this data file")
        return self.allowed[(module, name)]


def load_restricted(
    path: Path, what: str, allowed: Mapping[tuple[str, str], Any] = NUMPY_GLOBALS, encoding: str = "latin1"
) -> Any:
    """Unpickle `path` (gzip-compressed if it ends in .gz) with only `allowed` globals; failures -> DataError."""
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist. Expected a pickle file at that path.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            return RestrictedUnpickler(file, allowed, encoding).load()
    except CORRUPT_FILE_ERRORS as err:
        raise DataError(
            f"{what} file {path} is truncated or corrupt and could not be read ({type(err).__name__}: {err}). "
            "Expected a complete pickle of numpy arrays"
            + (" compressed with gzip." if opener is gzip.open else ".")
            + " Re-download or re-install the file."
        ) from err
