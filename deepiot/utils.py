"""Small helpers shared across deepiot: seeding, config errors, atomic file writes."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


class ConfigError(ValueError):
    """A config value is missing or out of range; raised before any long work starts."""


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch's CPU generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from several integers, e.g. (run seed, epoch), so streams never overlap."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a.b.c": leaf} (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], at_most: int = 5) -> str:
    """Human-readable list of the dotted keys whose values differ, e.g. "trainer.lr: 0.001 → 0.01"."""
    old_flat, new_flat = flatten(old), flatten(new)
    keys = sorted(set(old_flat) | set(new_flat))
    changes = [
        f"{key}: {old_flat.get(key, '<absent>')!r} → {new_flat.get(key, '<absent>')!r}"
        for key in keys
        if old_flat.get(key, "<absent>") != new_flat.get(key, "<absent>")
    ]
    more = f" (and {len(changes) - at_most} more)" if len(changes) > at_most else ""
    return "; ".join(changes[:at_most]) + more


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], None], binary: bool = False
) -> None:
    """Write a file atomically: `write(file)` into a temporary file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file intact, never a half-written one; the file gets the usual
    permissions (mkstemp alone would create it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file `path` (created if needed) while the block runs, so that
    parallel jobs (a joblib sweep) do not do the same work at once. A no-op where fcntl is missing (Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _current_umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
