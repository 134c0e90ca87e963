"""Confidence intervals and paired differences against hand-computed numbers."""

from __future__ import annotations

import pytest

from deepiot.baselines.statistics import Interval, fold_means, mean_interval, paired_difference


def test_mean_interval_matches_the_t_interval_computed_by_hand():
    # values 1, 2, 3, 4, 5: mean 3, sample std sqrt(2.5) = 1.5811, t(0.975, 4) = 2.7764
    # half width = 2.7764 * 1.5811 / sqrt(5) = 1.9632
    interval = mean_interval([1, 2, 3, 4, 5])
    assert interval.mean == pytest.approx(3.0)
    assert interval.low == pytest.approx(3.0 - 1.9632, abs=1e-4)
    assert interval.high == pytest.approx(3.0 + 1.9632, abs=1e-4)
    assert interval.count == 5


def test_one_value_has_no_interval():
    assert mean_interval([0.9]) == Interval(0.9, None, None, 1)
    assert mean_interval([0.9]).significant is None
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_pairing_removes_the_spread_between_folds():
    # fold difficulty varies a lot (0.80 .. 0.96) but the method is always 1 point ahead of the reference
    reference = {0: 0.80, 1: 0.90, 2: 0.96, 3: 0.85, 4: 0.88}
    method = {0: 0.81, 1: 0.91, 2: 0.97, 3: 0.86, 4: 0.89}
    difference = paired_difference(method, reference)
    assert difference.mean == pytest.approx(0.01)
    assert difference.high - difference.low == pytest.approx(
        0.0, abs=1e-12
    )  # identical differences: no spread
    assert difference.significant is True
    unpaired = mean_interval(
        list(method.values())
    )  # the same numbers unpaired: an interval wider than the gap
    assert unpaired.high - unpaired.low > 0.05


def test_a_difference_whose_interval_contains_zero_is_not_significant():
    # differences +2, -1, +1, -2, 0 points: mean 0, interval around it
    reference = {fold: 0.9 for fold in range(5)}
    method = {0: 0.92, 1: 0.89, 2: 0.91, 3: 0.88, 4: 0.90}
    difference = paired_difference(method, reference)
    assert difference.mean == pytest.approx(0.0, abs=1e-12)
    assert difference.significant is False


def test_paired_difference_uses_only_shared_folds_and_seed_means():
    means = fold_means({0: [0.8, 0.9], 1: [0.7], 2: []})
    assert means == {0: pytest.approx(0.85), 1: pytest.approx(0.7)}
    difference = paired_difference(means, {1: 0.6, 3: 0.5})
    assert difference == Interval(pytest.approx(0.1), None, None, 1)
    assert paired_difference(means, {7: 0.5}) is None
