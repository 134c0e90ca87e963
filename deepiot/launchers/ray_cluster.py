"""Ray worker setup for `hydra/launcher=ray_cluster` (configs/hydra/launcher/ray_cluster.yaml).

A Ray worker starts in the folder its node's `ray start` ran in, not in the folder the sweep was launched from, so
hydra-ray-launcher's jobs would resolve relative paths (`hydra.sweep.dir`, `paths.original_dir`, data roots) there.
The launcher config passes the launch folder to the job's workers (runtime_env env_vars DEEPIOT_LAUNCH_DIR) and
names `enter_launch_folder` as their worker_process_setup_hook. On several nodes the folder must be shared.
"""

from __future__ import annotations

import os
from pathlib import Path

LAUNCH_DIR = "DEEPIOT_LAUNCH_DIR"


def enter_launch_folder() -> None:
    """Move this Ray worker to $DEEPIOT_LAUNCH_DIR (the sweep's launch folder); nothing when it is unset."""
    folder = os.environ.get(LAUNCH_DIR)
    if not folder:
        return
    if not Path(folder).is_dir():
        raise FileNotFoundError(
            f"the sweep was launched from {folder}, which this Ray node ({os.uname().nodename}) lacks: launch from "
            "a folder that every node of the cluster shares."
        )
    os.chdir(folder)
