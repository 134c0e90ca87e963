"""Baseline compression methods beside DeepIoT, sharing its slicing, fine-tuning, export and report path.

`prune(model, train, val, test, method=..., budget=...)` runs one end to end (see `pipeline.prune`);
`selection` picks structured kept sets (magnitude, magnitude_floor, uniform, random), `reference` wraps
Torch-Pruning's global pruner, `pipeline.scratch_choice` re-initialises another run's architecture (scratch),
`unstructured` masks individual weights (unstructured: global ranking; unstructured_fair: gradual, LAMP-ranked).
"""

from __future__ import annotations

from deepiot.baselines.pipeline import METHODS, NEEDS_PLAN, prune
from deepiot.baselines.selection import (
    default_floors,
    magnitude_at_budget,
    magnitude_at_counts,
    magnitude_at_fraction,
    magnitude_floor_at_budget,
    random_at_counts,
    uniform_at_budget,
    uniform_fraction_at_budget,
)
from deepiot.runtime import reinitialised

__all__ = [
    "METHODS",
    "NEEDS_PLAN",
    "default_floors",
    "magnitude_at_budget",
    "magnitude_at_counts",
    "magnitude_at_fraction",
    "magnitude_floor_at_budget",
    "prune",
    "random_at_counts",
    "reinitialised",
    "uniform_at_budget",
    "uniform_fraction_at_budget",
]
