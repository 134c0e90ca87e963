"""The reproduction grid on each launcher: wall time of the same 4-run grid, sequential vs parallel vs Ray.

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_grid_launchers.py [workers=2] [launchers=sequential,parallel,ray]
        [ray_address=127.0.0.1:6379] [out=experiments/cluster/README.md] [compress.max_iterations=1000 ...]

The grid: lenet300_mnist on 256 MNIST samples, DeepIoT and magnitude pruning at a 20% params budget, seeds 0 and 1
(4 independent runs, one torch thread each; 200 compression iterations and 100 fine-tuning steps, so that a run
lasts seconds, not the launchers' start-up). The original is trained once beforehand and shared, so every launcher
runs the same 4 runs (plus the original's export and latency in its own runs folder). Each launcher starts from
an empty runs folder; its wall time includes its own start-up (loky workers; a local Ray of `workers` CPUs, or
joining ray_address). The results must be equal across launchers (accuracy, params, kept counts; not latency).
Arguments with a dot are overrides added to every run (longer runs: compress.max_iterations=..., finetune.steps=...).
The markdown table replaces the part of `out` between <!-- bench:start --> and <!-- bench:end -->.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import tempfile
import time
from pathlib import Path

# a local Ray stays on 127.0.0.1, sends no usage statistics and uses a token of its own (Ray would write one to
# ~/.ray/auth_token, which every later `ray start` on the machine then requires); set before Ray is imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if "RAY_ADDRESS" not in os.environ and "ray_address=" not in " ".join(sys.argv):
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ROOT = Path(__file__).resolve().parents[2]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

from deepiot.cli.dispatch import run_grid_on  # noqa: E402
from deepiot.cli.harness import Grid, original_reference  # noqa: E402

OVERRIDES = (
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "finetune.steps=100",
    "finetune.eval_every=50",
    "finetune.batch_size=32",
    "compress.max_iterations=200",
    "compress.eval_every=100",
    "compress.batch_size=32",
)
COMPARED = ("test_accuracy", "params", "macs", "kept_counts")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def grid(folder: Path, original: Path, extra: tuple[str, ...] = ()) -> Grid:
    return Grid(
        task="lenet300_mnist",
        methods=("deepiot", "magnitude"),
        budgets=(0.2,),
        seeds=(0, 1),
        runs_dir=folder / "runs",
        results_dir=folder / "results",
        latency_repeats=20,
        overrides=(*OVERRIDES, *extra, f"paths.original_dir={original}"),
    )


def outcome(records: list[dict]) -> list:
    return sorted((r["method"], r["seed"], *(json.dumps(r[key]) for key in COMPARED)) for r in records)


def main() -> None:
    options = dict(argument.split("=", 1) for argument in sys.argv[1:])
    workers = int(options.get("workers", 2))
    launchers = options.get("launchers", "sequential,parallel,ray").split(",")
    out = Path(options.get("out", ROOT / "experiments" / "cluster" / "README.md"))
    extra = tuple(
        f"{key}={value}" for key, value in options.items() if "." in key
    )  # e.g. compress.max_iterations=1000
    logging.basicConfig(level=logging.WARNING)
    base = Path(tempfile.mkdtemp(prefix="bench_grid_"))
    original = base / "train"
    start = time.perf_counter()
    original_reference(grid(base / "warmup", original, extra))  # trains the shared original
    print(f"[bench] original trained in {time.perf_counter() - start:.1f} s")
    rows, reference = [], None
    for launcher in launchers:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        records = run_grid_on(
            grid(base / launcher, original, extra),
            launcher,
            workers=workers,
            address=options.get("ray_address"),
        )
        seconds = time.perf_counter() - start
        reference = reference or outcome(records)
        same = outcome(records) == reference
        rows.append((launcher, seconds, load, os.getloadavg()[0], same))
        print(f"[bench] {launcher}: {seconds:.1f} s, results equal to the first launcher's: {same}")
    sequential = next((seconds for name, seconds, *_ in rows if name == "sequential"), None)
    command = "OMP_NUM_THREADS=1 nice -n 19 python scripts/benchmarks/bench_grid_launchers.py " + " ".join(
        shlex.quote(argument) for argument in sys.argv[1:]
    )
    lines = [
        START,
        f"`{command.strip()}` ({os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):",
        "",
        "| launcher | workers | wall time (s) | speed-up vs sequential | load average before → after | "
        "results equal |",
        "|-|-|-|-|-|-|",
    ]
    for name, seconds, before, after, same in rows:
        speedup = f"{sequential / seconds:.2f}×" if sequential else "—"
        count = 1 if name == "sequential" else workers
        lines.append(
            f"| {name} | {count} | {seconds:.1f} | {speedup} | {before:.1f} → {after:.1f} | {same} |"
        )
    lines.append(END)
    table = "\n".join(lines)
    text = out.read_text() if out.is_file() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + table + text[text.index(END) + len(END) :]
    else:
        text += ("\n" if text else "") + table + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
