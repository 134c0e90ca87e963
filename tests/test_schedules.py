"""Threshold schedules: the paper's fixed staircase and the accuracy-guarded one."""

from __future__ import annotations

import pytest

from deepiot.compression.schedules import (
    AccuracyGuardedThreshold,
    PaperThreshold,
    ScheduleConfig,
    build_schedule,
)


def test_paper_schedule_is_the_papers_staircase():
    schedule = PaperThreshold(
        ScheduleConfig(every=500)
    )  # the paper's code (compress=paper); the default is 50
    assert schedule(0) == 0.0
    assert schedule(499) == 0.0
    assert schedule(500) == pytest.approx(0.025)
    assert schedule(16_499) == pytest.approx(32 * 0.025)
    assert schedule(16_500) == pytest.approx(0.825)
    assert schedule(10**6) == pytest.approx(0.825)  # never beyond the final threshold
    assert not schedule.at_limit(16_499)
    assert schedule.at_limit(16_500)


def test_paper_schedule_reaches_final_tau_in_the_configured_number_of_steps():
    schedule = PaperThreshold(ScheduleConfig(final_tau=0.6, steps=3, every=10))
    assert [schedule(i) for i in (0, 10, 20, 30, 40)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.6])


def test_guarded_schedule_raises_while_accurate_and_backs_off_otherwise():
    schedule = AccuracyGuardedThreshold(
        ScheduleConfig(name="guarded", final_tau=0.3, steps=3, every=100, tolerance=0.01)
    )
    schedule.observe(100, val_accuracy=0.99, reference_accuracy=0.99)
    assert schedule(100) == pytest.approx(0.1)
    schedule.observe(150, val_accuracy=0.99, reference_accuracy=0.99)  # too soon after the last raise
    assert schedule(150) == pytest.approx(0.1)
    schedule.observe(200, val_accuracy=0.981, reference_accuracy=0.99)  # within tolerance: raise
    assert schedule(200) == pytest.approx(0.2)
    assert not schedule.at_limit(200)
    schedule.observe(250, val_accuracy=0.97, reference_accuracy=0.99)  # too inaccurate: back off
    assert schedule(250) == pytest.approx(0.1)
    assert schedule.at_limit(250)


def test_guarded_schedule_stops_at_final_tau_and_never_goes_below_zero():
    schedule = AccuracyGuardedThreshold(ScheduleConfig(name="guarded", final_tau=0.2, steps=2, every=1))
    schedule.observe(1, 0.0, 0.9)
    assert schedule(1) == 0.0
    for iteration in range(2, 10):
        schedule.observe(iteration, 0.9, 0.9)
    assert schedule(10) == pytest.approx(0.2)
    assert schedule.at_limit(10)


def test_guarded_schedule_state_round_trip():
    config = ScheduleConfig(name="guarded", every=1)
    schedule = build_schedule(config)
    for iteration in (1, 2, 3):
        schedule.observe(iteration, 0.9, 0.9)
    schedule.observe(4, 0.5, 0.9)
    restored = build_schedule(config)
    restored.load_state_dict(schedule.state_dict())
    assert restored(5) == schedule(5) == pytest.approx(2 * config.step_size)
    assert restored.at_limit(5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_tau": 1.0}, "final_tau"),
        ({"final_tau": -0.1}, "final_tau"),
        ({"steps": 0}, "steps"),
        ({"every": 0}, "every"),
        ({"decay": 0.0}, "decay"),
        ({"name": "cosine"}, "schedule.name"),
        ({"tolerance": 1.5}, "tolerance"),
    ],
)
def test_bad_schedule_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)
