"""Live launchers (marker `cluster`): a 2-job deepiot-compress sweep on a real local Ray cluster (127.0.0.1 only)
and through submitit's LocalExecutor, each rerun to see both jobs skipped; the reproduction grid on `parallel`
(and on Ray) gives the sequential grid's results. The Ray tests skip without `pip install -e ".[ray]"`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_reproduce import TINY

from deepiot.cli import dispatch, harness
from deepiot.cli.dispatch import run_grid_on, waves
from deepiot.cli.harness import Grid

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
TINY_SWEEP = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "num_threads=1",
    "device=cpu",
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "compress.batch_size=32",
    "finetune.steps=4",
    "compress.latency_threads=null",
    "hydra.sweep.dir=sweep",
]
TINY_GRID = TINY  # the harness tests' tiny settings
# Ray on one machine, loopback only: without this Ray replaces 127.0.0.1 by the machine's routable address
# ... and with a token of its own (not ~/.ray/auth_token, which a local ray.init() writes and ray start then uses)
LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
}
NO_DRAIN = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # the head stops at once on SIGTERM


def job_env(**extra: str) -> dict[str, str]:
    """This checkout's deepiot first on the path of every job process, one thread, 1 CPU per job."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **LOOPBACK, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
            "DEEPIOT_CPUS_PER_JOB": "1", **extra}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head of 2 CPUs on 127.0.0.1 (`ray start --head --block` in its own process group, its own temp dir);
    yields its address; the teardown ends that process group, also when a test failed."""
    # not imported here: Ray reads its settings (LOOPBACK) when imported; the drivers are subprocesses
    if (
        importlib.util.find_spec("ray") is None
        or importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None
    ):
        pytest.skip('Ray and its Hydra launcher are not installed (pip install -e ".[ray]")')
    temp_dir = Path(
        tempfile.mkdtemp(prefix="rt", dir="/tmp")
    )  # short: Ray's socket paths have a length limit
    port = free_port()
    log_file = (temp_dir / "head.log").open("w")
    command = ["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
               "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--include-dashboard=false",
               "--disable-usage-stats"]  # fmt: skip
    head = subprocess.Popen(command, cwd=temp_dir, env=job_env(**NO_DRAIN), stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (temp_dir / "head.log").read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{(temp_dir / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(head)
        log_file.close()


def live_members(group: int) -> list[int]:
    """The processes of process group `group` that are not zombies."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_process_group(head: subprocess.Popen) -> None:
    """SIGTERM the Ray head's process group (every Ray process it started), SIGKILL what is left after 30 s."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sent)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            head.poll()  # reaps `ray start` itself
            if not live_members(head.pid):
                break
            time.sleep(0.5)
        else:
            continue
        break
    head.wait(timeout=30)
    assert not live_members(head.pid), "Ray processes outlived the test"


def sweep(cwd: Path, *launcher: str) -> str:
    """The tiny `deepiot-compress -m ... seed=0,1` sweep in `cwd`; returns its output."""
    command = [sys.executable, "-m", "deepiot.cli.compress", "-m", *launcher, "seed=0,1", *TINY_SWEEP]
    completed = subprocess.run(command, cwd=cwd, env=job_env(), capture_output=True, text=True, timeout=900,
                               check=False)  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    return output


def check_sweep_and_rerun(cwd: Path, *launcher: str) -> str:
    """Both jobs wrote their report and export; the rerun skips both and rewrites no result file."""
    output = sweep(cwd, *launcher)
    reports = sorted((cwd / "sweep").glob("*/report.json"))
    assert [json.loads(path.read_text())["config"]["loop"]["seed"] for path in reports] == [0, 1]
    for path in reports:
        exported = {file.name for file in (path.parent / "export").iterdir()}
        assert {"model.onnx", "manifest.json"} <= exported, exported
        assert (path.parent / "finetuned_model.pt").is_file()
    originals = [
        cwd / "outputs" / "train" / name / "model.pt" for name in ("lenet300_mnist", "lenet300_mnist_seed1")
    ]
    assert all(path.is_file() for path in originals)  # relative paths resolved in the launch folder
    written = {path: path.stat().st_mtime_ns for path in cwd.rglob("*") if path.is_file()}
    again = sweep(cwd, *launcher)
    rewritten = {path for path, stamp in written.items() if path.stat().st_mtime_ns != stamp}
    assert not {path for path in rewritten if path.suffix in (".pt", ".json", ".onnx")}
    logs = "".join(path.read_text() for path in (cwd / "sweep").glob("*/*.log"))
    assert logs.count("holds a finished run with this config: skipped") == 2
    return output + again


def test_ray_cluster_sweep_runs_two_jobs_on_the_cluster_and_a_rerun_skips_them(ray_head, tmp_path):
    output = check_sweep_and_rerun(
        tmp_path, "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}"
    )
    assert output.count(f"Connecting to existing Ray cluster at address: {ray_head}") == 2
    assert output.count("(_run_job pid=") >= 2  # the jobs' output, relayed from the Ray workers


def test_submitit_local_sweep_runs_two_subprocess_jobs_and_a_rerun_skips_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    check_sweep_and_rerun(tmp_path, "hydra/launcher=local")
    jobs = sorted(path for path in (tmp_path / "sweep" / ".submitit").iterdir() if path.name.isdigit())
    assert len(jobs) == 4  # two sweeps of two jobs, each a process of its own with its submitit logs
    for job in jobs:
        assert {f"{job.name}_0_log.out", f"{job.name}_0_log.err", f"{job.name}_0_result.pkl"} <= {
            path.name for path in job.iterdir()
        }
    assert "finished run with this config: skipped" in "".join(
        (job / f"{job.name}_0_log.err").read_text() + (job / f"{job.name}_0_log.out").read_text()
        for job in jobs
    )


def tiny_grid(tmp_path: Path, runs: str, original: Path) -> Grid:
    """4 runs: DeepIoT and scratch (its architecture, trained from scratch: a later wave) × seeds 0, 1."""
    return Grid(
        task="lenet300_mnist",
        methods=("deepiot", "scratch"),
        budgets=(0.2,),
        seeds=(0, 1),
        runs_dir=tmp_path / runs,
        results_dir=tmp_path / f"{runs}_results",
        latency_repeats=3,
        overrides=(*TINY_GRID, f"paths.original_dir={original}"),
    )


COMPARED = ("test_accuracy", "val_accuracy", "original_test_accuracy", "params", "macs", "kept_counts")


def outcomes(records: list[dict]) -> list[tuple]:
    return sorted((record["method"], record["seed"], *(json.dumps(record[key]) for key in COMPARED))
                  for record in records)  # fmt: skip


@pytest.fixture(scope="module")
def sequential_grid(tmp_path_factory):
    """The tiny grid run sequentially (its original is shared by the other launchers' grids)."""
    tmp_path = tmp_path_factory.mktemp("grid")
    original = tmp_path / "train"
    records = run_grid_on(tiny_grid(tmp_path, "sequential", original), "sequential")
    return tmp_path, original, records


def test_parallel_grid_gives_the_sequential_results_and_a_killed_grid_resumes_on_submitit(
    sequential_grid, monkeypatch, caplog
):
    tmp_path, original, expected = sequential_grid
    monkeypatch.setenv("PYTHONPATH", job_env()["PYTHONPATH"])  # the loky workers import this checkout
    grid = tiny_grid(tmp_path, "parallel", original)
    assert [len(wave) for wave in waves(grid)] == [1, 2, 2]  # original, deepiot runs, then scratch runs
    with caplog.at_level("INFO", logger="deepiot.cli.dispatch"):
        records = run_grid_on(grid, "parallel", workers=2)
    assert len(records) == 4 and outcomes(records) == outcomes(expected)
    ended = re.findall(r"\[(\d)/2\] (\S+): done in [\d.]+ s", caplog.text)  # a line per run as it ends
    assert sorted(folder for _, folder in ended) == sorted(str(run.folder) for run in grid.runs())
    assert sorted(index for index, _ in ended) == ["1", "1", "2", "2"]  # two waves of 2, counted as they end
    killed = grid.runs()[-1]  # as if the grid had been killed before its last run finished
    (killed.folder / harness.RESULT_FILE).unlink()
    assert [[job.name for job in wave] for wave in waves(grid)] == [[str(grid.task_dir(None) / "original")], [],
                                                                    [str(killed.folder)]]  # fmt: skip
    # ... and resumes on another launcher: submitit's LocalExecutor, a subprocess with its submitit logs
    assert outcomes(run_grid_on(grid, "submitit_local", workers=2)) == outcomes(expected)
    logs = sorted((grid.runs_dir / ".submitit").glob("*/*_0_log.err"))
    assert len(logs) == 2  # the original (read back) and the killed run


def test_a_run_another_process_finished_during_the_grid_is_not_run_again(
    sequential_grid, monkeypatch, caplog
):
    """A scratch run started by hand once its DeepIoT run was done finishes while the grid's earlier wave runs: the
    grid's scratch wave (listed when the grid started) skips it instead of training it a second time."""
    tmp_path, original, _ = sequential_grid
    monkeypatch.setenv("PYTHONPATH", job_env()["PYTHONPATH"])  # the loky workers import this checkout
    grid = tiny_grid(tmp_path, "sequential", original)  # its folder is left as it was: the same result.json
    scratch = next(run for run in grid.runs() if run.method == "scratch")
    result = scratch.folder / harness.RESULT_FILE
    finished_by_hand = result.read_bytes()
    result.unlink()
    assert [len(wave) for wave in waves(grid)] == [1, 0, 1]  # the original and the scratch run are pending
    submitted, enter = [], dispatch.Executor.__enter__

    def enter_and_finish_by_hand(self):
        submit_all = enter(self)

        def submit(jobs, cwd, report):
            submitted.append([job.name for job in jobs])
            outcomes = submit_all(jobs, cwd, report)
            result.write_bytes(finished_by_hand)  # meanwhile, another process finished the scratch run
            return outcomes

        return submit

    monkeypatch.setattr(dispatch.Executor, "__enter__", enter_and_finish_by_hand)
    with caplog.at_level("INFO", logger="deepiot.cli.dispatch"):
        records = run_grid_on(grid, "parallel", workers=2)
    assert submitted == [[str(grid.task_dir(None) / "original")]]  # no scratch wave
    assert f"{scratch.folder}: finished since the grid started (by another process): skipped" in caplog.text
    assert len(records) == 4 and result.read_bytes() == finished_by_hand


def test_ray_grid_from_the_command_line_gives_the_sequential_results(ray_head, sequential_grid):
    """scripts/reproduce.py launcher=ray: the grid's jobs as Ray tasks on the running cluster."""
    tmp_path, original, expected = sequential_grid
    grid = tiny_grid(tmp_path, "ray", original)
    command = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), f"task={grid.task}", "methods=deepiot,scratch",
               "budgets=0.2", "seeds=0,1", f"runs_dir={grid.runs_dir}", f"results_dir={grid.results_dir}",
               "latency_repeats=3", *grid.overrides, "launcher=ray", "workers=2", f"ray_address={ray_head}"]  # fmt: skip
    completed = subprocess.run(command, cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=900,
                               check=False)  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert f"Connecting to existing Ray cluster at address: {ray_head}" in output
    assert "[reproduce] lenet300_mnist: 4 runs" in output
    records = [json.loads((run.folder / harness.RESULT_FILE).read_text()) for run in grid.runs()]
    assert outcomes(records) == outcomes(expected)
