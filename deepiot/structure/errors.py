"""The one error type of the structure layer."""

from __future__ import annotations

from deepiot.errors import DeepIoTError


class StructureError(DeepIoTError, ValueError):
    """A model, group declaration, mask, kept-index set or slicing plan the structure layer cannot honour.

    The message names the offending node/module/group and says what was expected, so the user can fix
    the model or declare the structure explicitly (`Structure.from_model(..., exclude=[...])`).
    """
