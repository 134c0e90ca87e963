"""Small helpers shared across deepiot: seeding, config errors, atomic file writes."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import random
import shutil
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import torch

from deepiot.errors import DeepIoTError

T = TypeVar("T")

# A mean cross-entropy above this only comes from a diverged run (chance level is ln K: 2.3 for 10 classes);
# training and compression stop there instead of finishing on a broken model.
DIVERGED_LOSS = 1000.0


class ConfigError(DeepIoTError, ValueError):
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


# ------------------------------------------------------------------------------------------- config schema


def matches_type(value: Any, annotation: Any) -> bool:
    """Whether a plain config value (from YAML / the command line) fits a type annotation.

    Integers are accepted where floats are expected, but never floats (2.5) or booleans where integers are;
    lists stand for tuples and sequences. Unknown annotations (classes, `Any`) accept everything.
    """
    if annotation is Any or annotation is object:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches_type, value, args))
        return all(matches_type(item, args[0]) for item in value) if args else True
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping) and (
            not args or all(matches_type(item, args[1]) for item in value.values())
        )
    return True


def describe_type(annotation: Any) -> str:
    """Plain words for a type annotation, e.g. "an integer", "null or a number", "a list of 2 numbers"."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in words:
        return words[annotation]
    if annotation is type(None) or annotation is None:
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(describe_type(arg) for arg in args)})"
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of ({describe_type(args[0])})" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return f"a mapping to ({describe_type(args[1])})" if args else "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def check_types(values: Mapping[str, Any], hints: Mapping[str, Any], prefix: str) -> None:
    """Raise ConfigError naming the first `prefix.key` whose value does not fit its type hint (or is unknown)."""
    for key, value in values.items():
        if key.startswith("_"):  # _target_ and friends
            continue
        if key not in hints:
            raise ConfigError(
                f"config key {prefix}.{key} is unknown: expected one of {', '.join(sorted(hints))}. "
                "Check its spelling in configs/ or on the command line."
            )
        hint = hints[key]
        if isinstance(value, Mapping) and typing.get_origin(hint) in (dict, collections.abc.Mapping):
            value_type = typing.get_args(hint)[1] if typing.get_args(hint) else Any
            check_types(value, {name: value_type for name in value}, f"{prefix}.{key}")
            continue
        if not matches_type(value, hint):
            raise ConfigError(
                f"config value {prefix}.{key}={value!r} has the wrong type: expected "
                f"{describe_type(hint)}. Fix it in configs/ or override it on the command line "
                f"({prefix}.{key}=...)."
            )


def check_dataclass_types(cls: type, values: Mapping[str, Any], prefix: str) -> None:
    """`check_types` against the fields of dataclass `cls` (the settings schema of one config group)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name for field in dataclasses.fields(cls)}
    check_types(values, {key: hint for key, hint in hints.items() if key in fields}, prefix)


def config_to_dataclass(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    """Dataclass `cls` filled from one config group (plain values, e.g. `OmegaConf.to_container`).

    The one way settings go from YAML into the code: every key must be a field of `cls` with a value of its
    type (`check_dataclass_types`; `_target_`-style keys are skipped), lists become tuples where the field is a
    tuple, and the dataclass's own checks (ValueError/TypeError) become a ConfigError naming `prefix`.
    """
    check_dataclass_types(cls, values, prefix)
    hints = typing.get_type_hints(cls)
    settings = {
        key: tuple(value) if typing.get_origin(hints[key]) is tuple and isinstance(value, list) else value
        for key, value in values.items()
        if not key.startswith("_")
    }
    try:
        return cls(**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"invalid {prefix} config: {err} Fix it in configs/ or override it on the command line."
        ) from err


def check_call_types(function: Callable[..., Any], values: Mapping[str, Any], prefix: str) -> None:
    """`check_types` against the annotated parameters of `function` (a loader or a model class)."""
    target = function.__init__ if isinstance(function, type) else function
    hints = typing.get_type_hints(target)
    parameters = inspect.signature(target).parameters
    takes_any = any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values())
    schema = {name: hints.get(name, Any) for name in parameters if name != "self"}
    if takes_any:
        values = {key: value for key, value in values.items() if key in schema}
    check_types(values, schema, prefix)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the `.<name>.<random>.tmp` files and folders that `atomic_write` and the exporter leave behind when
    a run is killed mid-write; returns what was removed. Only call it on a run folder this process owns."""
    removed = []
    folder = Path(folder)
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
