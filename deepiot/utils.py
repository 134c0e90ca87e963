"""Small helpers shared by the entry points: seeding and config errors."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

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
