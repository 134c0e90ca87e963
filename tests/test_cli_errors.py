"""Bad input on the real command lines ends with one clear message and exit status 2, before any work."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            ["deepiot-compress", "critic.lr=-1"],
            "deepiot-compress: error: invalid critic config: critic.lr",
        ),
        (["deepiot-compress", "schedule.final_tau=1.5"], "schedule.final_tau"),
        (
            ["deepiot-train", "data.dataset.root=/nonexistent/mnist"],
            "deepiot-train: error: MNIST root /nonexistent/mnist",
        ),
        (
            ["deepiot-export", "checkpoint=/nonexistent/model.pt"],
            "deepiot-export: error: checkpoint file /nonexistent/model.pt",
        ),
    ],
)
def test_bad_input_gives_one_message_and_status_2(tmp_path, command, expected):
    done = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path}/run"] if command[0] != "deepiot-export" else command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "compress_state.pt").exists()
