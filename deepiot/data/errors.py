"""The one exception every loader raises for missing, corrupt or malformed data."""

from __future__ import annotations

from deepiot.errors import DeepIoTError


class DataError(DeepIoTError, ValueError):
    """A dataset file or folder is missing, truncated, corrupt or not in the expected format.

    The message is one paragraph that names the file and says what was expected.
    """
