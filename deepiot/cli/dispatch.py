"""The reproduction grid on a launcher: its runs as jobs on local processes, a Ray cluster or submitit.

    run_grid_on(grid, "parallel", workers=4)      # joblib (loky): 4 local processes
    run_grid_on(grid, "ray", workers=8)           # Ray tasks on $RAY_ADDRESS (or `address`), else a local Ray
    run_grid_on(grid, "submitit_local", workers=2)  # submitit's LocalExecutor: subprocesses with submitit logs
    run_grid_on(grid, "sequential")               # deepiot.cli.harness.run_grid, in this process

Waves, each finished before the next starts: the originals of the folds with missing runs (one job per fold),
then every missing run but `scratch`, then the `scratch` runs (each trains the architecture of the DeepIoT run of
its fold, budget and seed, so that run must have finished). The driver logs each job as it ends (`[3/25] <run
folder>: done in 812.4 s`), then aggregates, exactly as `run_grid` does. A run is skipped when its result.json
exists (written last, atomically), so a killed grid, rerun on any launcher, runs only what is missing; each wave
checks again before it starts, so a run another process finished meanwhile is not run twice. A failing run does
not stop the others (GridError names the failures after aggregating); a configuration error (it would fail every
run) stops the grid after the wave it occurred in.

Jobs run in the driver's working folder (relative runs_dir and overrides resolve as in the driver; on several Ray
nodes it must be a shared path) with one torch thread, as in `run_grid`.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from deepiot.cli import harness
from deepiot.cli.harness import Grid, GridError, Run
from deepiot.utils import ConfigError

log = logging.getLogger(__name__)

LAUNCHERS = ("sequential", "parallel", "ray", "submitit_local")
# the names of configs/hydra/launcher/*.yaml (and the plugins') accepted for the same launchers
ALIASES = {"joblib": "parallel", "ray_cluster": "ray", "local": "submitit_local", "basic": "sequential"}
SCRATCH = "scratch"


@dataclass(frozen=True)
class Job:
    """One original (run is None) or one run of the grid."""

    grid: Grid
    fold: int | None
    run: Run | None = None

    @property
    def name(self) -> str:
        return str(self.run.folder if self.run is not None else self.grid.task_dir(self.fold) / "original")


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    error: str = ""
    fatal: bool = False  # a configuration error: it would fail every run
    seconds: float = 0.0


def work(job: Job, cwd: str) -> Outcome:
    """Run one job in `cwd` (the driver's folder); never raises for the job's own errors."""
    import torch

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][{os.getpid()}][%(name)s] %(message)s")
        for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    previous, start = os.getcwd(), time.perf_counter()
    os.chdir(cwd)
    try:
        torch.set_num_threads(1)
        original = harness.original_reference(job.grid, job.fold)
        if job.run is not None:
            harness.execute(job.run, original)
        return Outcome(job.name, True, seconds=time.perf_counter() - start)
    except (ConfigError, HydraException, OmegaConfBaseException) as error:
        return Outcome(job.name, False, f"{type(error).__name__}: {error}", fatal=True)
    except Exception as error:  # noqa: BLE001 - reported by the driver with the others
        log.exception("%s: failed", job.name)
        return Outcome(job.name, False, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-3)}")
    finally:
        os.chdir(previous)


def waves(grid: Grid) -> list[list[Job]]:
    """[originals, runs, scratch runs] of what is missing (ValueError when a result has other overrides)."""
    pending = [run for run in grid.runs() if not harness.finished(run)]
    folds = list(dict.fromkeys(run.fold for run in pending))
    return [
        [Job(grid, fold) for fold in folds],
        [Job(grid, run.fold, run) for run in pending if run.method != SCRATCH],
        [Job(grid, run.fold, run) for run in pending if run.method == SCRATCH],
    ]


def progress_log(total: int) -> Report:
    """A callback that logs each job of a wave of `total` as it ends: `[3/25] <folder>: done in 812.4 s`."""
    ended = 0

    def report(outcome: Outcome) -> None:
        nonlocal ended
        ended += 1
        if outcome.ok:
            log.info("[%d/%d] %s: done in %.1f s", ended, total, outcome.name, outcome.seconds)
        else:
            log.error("[%d/%d] %s: failed: %s", ended, total, outcome.name, outcome.error)

    return report


def finished_since(job: Job) -> bool:
    """Whether the job's run finished after the grid listed its waves (another process ran it meanwhile, e.g. a
    scratch run started by hand once its DeepIoT run was done): it is skipped, not run again."""
    if job.run is None or not harness.finished(job.run):
        return False
    log.info("%s: finished since the grid started (by another process): skipped", job.name)
    return True


def run_grid_on(
    grid: Grid, launcher: str = "sequential", workers: int = 2, address: str | None = None
) -> list[dict[str, Any]]:
    """Run the grid's missing runs as jobs on `launcher` (LAUNCHERS or ALIASES), `workers` at a time, then
    aggregate in this process; returns the records like `harness.run_grid`.

    address: the Ray cluster to join (default $RAY_ADDRESS; without either, a local Ray of `workers` CPUs).
    """
    launcher = ALIASES.get(launcher, launcher)
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={launcher!r} is unknown: choose from {', '.join(LAUNCHERS)}.")
    if workers < 1:
        raise ConfigError(f"workers={workers} is invalid: expected an integer >= 1.")
    if launcher == "sequential":
        return harness.run_grid(grid)
    total, failures, failed_folds = len(grid.runs()), [], set()
    cwd = os.getcwd()
    with Executor(launcher, workers, address, grid) as submit_all:
        for wave in waves(grid):
            wave = [job for job in wave if job.fold not in failed_folds and not finished_since(job)]
            if not wave:
                continue
            log.info("%s: %d job(s) on %s, %d at a time", grid.task, len(wave), launcher, workers)
            outcomes = submit_all(wave, cwd, progress_log(len(wave)))
            for job, outcome in zip(wave, outcomes, strict=True):
                if outcome.ok:
                    continue
                if job.run is None:
                    failed_folds.add(job.fold)
                failures.append(f"{outcome.name}: {outcome.error.splitlines()[0]}")
            fatal = [outcome for outcome in outcomes if outcome.fatal]
            if fatal:
                raise ConfigError(f"{fatal[0].name}: {fatal[0].error}")
    missing = [run for run in grid.runs() if run.fold in failed_folds and not harness.finished(run)]
    failures += [f"{run.folder}: not run: the original of its fold failed" for run in missing]
    records = harness.aggregate(grid)
    if failures:
        raise GridError(
            f"{len(failures)} jobs of the {grid.task} grid ({total} runs) failed (the rest are aggregated in "
            f"{grid.results_dir / grid.task}; rerunning the command retries only these):\n"
            + "\n".join(failures)
        )
    return records


Report = Callable[[Outcome], None]
# submit_all(jobs, cwd, report): runs the jobs, calls report(outcome) as each ends, returns the outcomes in job order
Submit = Callable[[Sequence[Job], str, Report], list[Outcome]]


class Executor:
    """Context manager: a `submit_all(jobs, cwd, report) -> outcomes` (Submit) for the launcher, and its cleanup."""

    def __init__(self, launcher: str, workers: int, address: str | None, grid: Grid) -> None:
        self.launcher, self.workers, self.address, self.grid = launcher, workers, address, grid
        self.started_ray = False

    def __enter__(self) -> Submit:
        return getattr(self, f"_{self.launcher}")()

    def __exit__(self, *exc_info: Any) -> None:
        if self.started_ray:
            import ray

            ray.shutdown()

    def _parallel(self) -> Submit:
        from joblib import Parallel, delayed

        def submit_all(jobs: Sequence[Job], cwd: str, report: Report) -> list[Outcome]:
            ended = {}
            run_all = Parallel(n_jobs=self.workers, backend="loky", return_as="generator_unordered")
            for outcome in run_all(delayed(work)(job, cwd) for job in jobs):
                report(outcome)
                ended[outcome.name] = outcome
            return [ended[job.name] for job in jobs]

        return submit_all

    def _ray(self) -> Submit:
        import ray

        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False)
            self.started_ray = True
        remote = ray.remote(num_cpus=1, max_retries=0)(work)

        def submit_all(jobs: Sequence[Job], cwd: str, report: Report) -> list[Outcome]:
            handles: dict[Any, int] = {}
            outcomes: list[Outcome | None] = [None] * len(jobs)
            queue = list(enumerate(jobs))
            while queue or handles:
                while queue and len(handles) < self.workers:
                    index, job = queue.pop(0)
                    handles[remote.remote(job, cwd)] = index
                done, _ = ray.wait(list(handles), num_returns=1)
                for handle in done:
                    index = handles.pop(handle)
                    try:
                        outcomes[index] = ray.get(handle)
                    except Exception as error:  # noqa: BLE001 - a worker that died: this job failed
                        outcomes[index] = Outcome(jobs[index].name, False, f"{type(error).__name__}: {error}")
                    report(outcomes[index])
            return [outcome for outcome in outcomes if outcome is not None]

        return submit_all

    def _submitit_local(self) -> Submit:
        import submitit

        folder = Path(self.grid.runs_dir) / ".submitit" / "%j"

        def submit_all(jobs: Sequence[Job], cwd: str, report: Report) -> list[Outcome]:
            runner = submitit.LocalExecutor(folder=folder)
            runner.update_parameters(timeout_min=24 * 60)
            running: dict[Any, int] = {}
            outcomes: list[Outcome | None] = [None] * len(jobs)
            queue = list(enumerate(jobs))
            while queue or running:
                while queue and len(running) < self.workers:
                    index, job = queue.pop(0)
                    running[runner.submit(work, job, cwd)] = index
                    log.info("%s: submitit job %s", job.name, list(running)[-1].job_id)
                for handle in [handle for handle in running if handle.done()]:
                    index = running.pop(handle)
                    try:
                        outcomes[index] = handle.result()
                    except Exception as error:  # noqa: BLE001 - the job's process failed: this job failed
                        outcomes[index] = Outcome(jobs[index].name, False, f"{type(error).__name__}: {error}")
                    report(outcomes[index])
                time.sleep(0.5)
            return [outcome for outcome in outcomes if outcome is not None]

        return submit_all


LAUNCH_KEYS = ("launcher", "hydra/launcher", "workers", "ray_address")


def split_launch_arguments(arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """deepiot-reproduce's launcher=, workers=, ray_address= (→ run_grid_on's keywords) and the rest."""
    launch: dict[str, Any] = {}
    rest = []
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if not separator or key not in LAUNCH_KEYS:
            rest.append(argument)
        elif key == "workers":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"workers={value!r} is invalid: expected an integer >= 1 (parallel jobs).")
            launch["workers"] = int(value)
        elif key == "ray_address":
            launch["address"] = value or None
        elif ALIASES.get(value, value) in LAUNCHERS:
            launch["launcher"] = value
        else:
            raise ValueError(f"{key}={value!r} is unknown: choose from {', '.join(LAUNCHERS)}.")
    return launch, rest
