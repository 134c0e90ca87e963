"""Test accuracy of a DeepSense/HAPT user model per activity of the test window (where identity lives).

    python experiments/originals/hapt_user_by_activity.py [outputs/train/deepsense_hapt_user_all_activities/model.pt]

For the original trained on all six activities (before deepsense_hapt_user kept only the walking-type bouts):
the windows are normalised with the all-activity training statistics, so a model trained on other windows (the
gait original) does not apply.

Test windows are those of `load_hapt_user()` defaults (bout split, 50% overlap; `train_overlap` does not change
them); each window's activity is its bout's, recovered in the loader's own order.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from deepiot.checkpoint import load_trained_model
from deepiot.data import load_hapt_user
from deepiot.data.hapt import ACTIVITY_NAMES, time_bounds, user_segments, window_starts, window_step
from deepiot.data.hapt_source import read_recordings

TEST_PART = 2  # parts: 0 train, 1 val, 2 test


def test_window_activities(window: int = 128, overlap: float = 0.5) -> np.ndarray:
    """[N] activity (1..6) of every test window, in load_hapt_user's order (segments, then starts)."""
    recordings, _ = read_recordings()
    step, activities = window_step(window, overlap), []
    for recording, start, end in user_segments(recordings, "bout"):
        lower, upper = time_bounds(end - start, 0.6, 0.2)[TEST_PART : TEST_PART + 2]
        count = len(window_starts(upper - lower, window, step))
        activities.append(np.full(count, recording.labels[start]))
    return np.concatenate(activities)


def main(path: str) -> None:
    torch.set_num_threads(1)
    model, _ = load_trained_model(path)
    inputs, labels = load_hapt_user().test.tensors
    with torch.no_grad():
        correct = (model(inputs).argmax(dim=1) == labels).numpy()
    activities = test_window_activities()
    assert len(activities) == len(correct), "activity recovery out of step with the loader"
    print(f"all: {100 * correct.mean():.2f}% of {len(correct)} test windows")
    for activity in np.unique(activities):
        chosen = activities == activity
        print(f"{ACTIVITY_NAMES[activity - 1]:>20}: {100 * correct[chosen].mean():6.2f}% of {chosen.sum()}")
    for name, chosen in (("walking-type (1-3)", activities <= 3), ("postures (4-6)", activities >= 4)):
        print(f"{name:>20}: {100 * correct[chosen].mean():6.2f}% of {chosen.sum()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/train/deepsense_hapt_user_all_activities/model.pt")
