"""Statistics of a cross-validated comparison: means with 95% confidence intervals, and paired differences.

The unit of replication is the fold (a disjoint set of test people): seeds inside a fold are averaged first,
since they share the fold's original and test people, then the fold means give a Student-t interval with
`folds - 1` degrees of freedom. A comparison of two methods is *paired*: per fold, method minus reference on
the same original and test people, then the t interval of those differences — which removes the spread that
comes from which people happened to be in the test set. A difference whose interval contains 0 is reported
as not significant. With a single fold (or one value) there is no interval (None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


class Interval(NamedTuple):
    """Mean of `count` values with its two-sided confidence interval (low, high); None without one."""

    mean: float
    low: float | None
    high: float | None
    count: int

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else self.high - self.mean

    @property
    def significant(self) -> bool | None:
        """True when the interval excludes 0 (for a difference); None without an interval."""
        return None if self.low is None else bool(self.low > 0 or self.high < 0)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of independent values (e.g. one per fold)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("mean_interval needs at least one value.")
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, None, None, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / np.sqrt(data.size))
    return Interval(mean, mean - half, mean + half, int(data.size))


def fold_means(values_by_fold: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """{fold: mean over its seeds}."""
    return {fold: float(np.mean(values)) for fold, values in values_by_fold.items() if len(values)}


def paired_difference(
    method: Mapping[int, float], reference: Mapping[int, float], confidence: float = CONFIDENCE
) -> Interval | None:
    """Interval of method − reference over the folds both have (fold means); None when they share none."""
    shared = sorted(set(method) & set(reference))
    if not shared:
        return None
    return mean_interval([method[fold] - reference[fold] for fold in shared], confidence)
