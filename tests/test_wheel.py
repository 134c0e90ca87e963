"""An installed wheel (not only an editable checkout) has commands with configs: configs/ ships as the package
deepiot.configs. Builds the wheel from a copy of the sources, installs it into a new virtual environment and
runs the commands from a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("deepiot", "configs", "pyproject.toml", "setup.py", "README.md")

# a compression of a few seconds (tests/test_compress_cli.py's TINY)
TINY = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "num_threads=1",
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "finetune.steps=10",
    "compress.batch_size=32",
    "compress.latency_threads=null",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a new virtual environment (with the system's packages) holding the built wheel."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: the build writes build/ and *.egg-info beside the sources
    ignore = shutil.ignore_patterns("__pycache__", "local", "*.egg-info")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(work / "dist"),
    ]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("deepiot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("deepiot/configs/")}
    expected = {
        f"deepiot/configs/{path.relative_to(ROOT / 'configs')}" for path in (ROOT / "configs").rglob("*.yaml")
    }
    expected = {name for name in expected if not name.startswith("deepiot/configs/local/")}
    assert expected and expected <= shipped, f"configs missing from the wheel: {sorted(expected - shipped)}"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(work / "venv")], check=True, timeout=300
    )
    bin_dir = work / "venv" / "bin"
    # --force-reinstall: pip would otherwise keep a deepiot of the same version that the system packages hold
    install = ["python", "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)]
    done = run_installed(bin_dir, install, cwd=work)
    assert done.returncode == 0, done.stderr
    return bin_dir


def run_installed(bin_dir: Path, command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command of the virtual environment in `cwd` with nothing pointing at the checkout (no PYTHONPATH)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_installed_package_reads_its_own_configs(installed, tmp_path):
    where = run_installed(
        installed,
        ["python", "-c", "import deepiot.cli as cli; print(cli.__file__); print(cli.CONFIG_DIR)"],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    module, config_dir = map(Path, where.stdout.split())
    venv = installed.parent
    assert module.is_relative_to(venv), f"deepiot was imported from {module}, not from the wheel in {venv}"
    assert config_dir == module.parents[1] / "configs" and (config_dir / "config.yaml").is_file(), config_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("deepiot-train", "_target_: deepiot.models.LeNet5"),
        ("deepiot-compress", "_target_: deepiot.models.LeNet5"),
        ("deepiot-baseline", "name: magnitude"),
        ("deepiot-export", "checkpoint: ???"),
    ],
)
def test_installed_commands_compose_their_config_outside_the_repository(
    installed, tmp_path, command, expected
):
    done = run_installed(installed, [command, "--cfg", "job"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout
    assert not (tmp_path / "outputs").exists()  # --cfg job prints, it runs nothing


@pytest.mark.slow
def test_installed_deepiot_compress_runs_a_tiny_compression_outside_the_repository(installed, tmp_path):
    done = run_installed(installed, ["deepiot-compress", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[deepiot-compress] lenet300_mnist: params left" in done.stdout, done.stdout
    run_dir = tmp_path / "outputs" / "compress" / "lenet300_mnist"
    assert (run_dir / "report.json").is_file() and (run_dir / "finetuned_model.pt").is_file()
    assert (tmp_path / "outputs" / "train" / "lenet300_mnist" / "model.pt").is_file()
