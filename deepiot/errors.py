"""The base of deepiot's own errors.

Every error the package raises about its input or a run (ConfigError, DataError, StructureError, ...) derives
from `DeepIoTError`, and also from ValueError (bad input: a config value, a file, a model) or RuntimeError (a
run that went wrong: a NaN loss, failed runs of a grid), as before. Each one's message already says what is
wrong and what was expected, so the commands print it (`<program>: error: ...`, exit status 2, see
`deepiot.cli.reported_errors`) instead of a traceback; catching `DeepIoTError` catches them all.
"""

from __future__ import annotations


class DeepIoTError(Exception):
    """Base of deepiot's own errors (see the module docstring); each class lives beside the code that raises it."""
