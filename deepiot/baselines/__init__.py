"""Baseline compression methods beside DeepIoT, sharing its slicing, fine-tuning, export and report path.

`prune(model, train, val, test, method=..., budget=...)` runs one end to end (see `pipeline.prune`);
`selection` picks structured kept sets (magnitude, random), `reference` wraps Torch-Pruning's global pruner,
`unstructured` masks individual weights.
"""

from __future__ import annotations

from deepiot.baselines.pipeline import METHODS, prune
from deepiot.baselines.selection import (
    magnitude_at_budget,
    magnitude_at_counts,
    magnitude_at_fraction,
    random_at_counts,
)

__all__ = [
    "METHODS",
    "magnitude_at_budget",
    "magnitude_at_counts",
    "magnitude_at_fraction",
    "prune",
    "random_at_counts",
]
