"""`hydra/launcher=ray_cluster`: hydra-ray-launcher's RayLauncher, with every job run in the launch folder.

A Ray worker starts in the folder its node's `ray start` ran in, not in the folder the sweep was launched from,
so the plugin's jobs would resolve relative paths (`hydra.sweep.dir`, `paths.original_dir`, data roots) there.
Each job here first moves to the launch folder (`hydra.runtime.cwd`; on several nodes it must be a shared path),
and a job that exits (deepiot's CLIs exit with status 2 on a bad config) fails as an error instead of ending the
Ray worker, which Ray would retry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher

log = logging.getLogger(__name__)


class JobExit(RuntimeError):
    """A sweep job called sys.exit."""


def run_job_in(
    cwd: str, hydra_context: Any, sweep_config: Any, task_function: Any, singleton_state: Any
) -> Any:
    """The plugin's job body, run in `cwd` (the Ray task)."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

    if not Path(cwd).is_dir():
        raise FileNotFoundError(
            f"the sweep was launched from {cwd}, which this Ray node ({os.uname().nodename}) lacks: launch from a "
            "folder that every node of the cluster shares."
        )
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return _run_job(hydra_context, sweep_config, task_function, singleton_state)
    except SystemExit as error:
        raise JobExit(f"the job exited with status {error.code}") from None
    finally:
        os.chdir(previous)


class RayClusterLauncher(RayLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray
        from omegaconf import OmegaConf, open_dict

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        cwd = str(self.config.hydra.runtime.cwd)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            f"Ray Launcher is launching {len(job_overrides)} jobs in {cwd}, sweep output dir: {sweep_dir}"
        )
        start_ray(self.ray_cfg.init)
        options = OmegaConf.to_container(self.ray_cfg.remote, resolve=True) if self.ray_cfg.remote else {}
        remote = ray.remote(**options)(run_job_in) if options else ray.remote(run_job_in)
        runs = []
        for index, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{index} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"job_id_for_{index}"
                sweep_config.hydra.job.num = index
            runs.append(
                remote.remote(
                    cwd, self.hydra_context, sweep_config, self.task_function, Singleton.get_state()
                )
            )
        return [ray.get(run) for run in runs]
