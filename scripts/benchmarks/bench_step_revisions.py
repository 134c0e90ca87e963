"""Cost of one compressor-critic iteration on two code revisions of deepiot, side by side (same machine).

Each revision is a source folder (a git worktree); every measurement runs in a fresh interpreter importing that
folder's `deepiot`, and the two alternate round by round so that load from other processes hits both alike.
A measurement times `--iterations` iterations of LeNet-5 (masked, batch 64, 1 thread) after a warm-up, on
random inputs of MNIST's shape, and reports the median per iteration. Prints a table and the ratio.

    git worktree add --detach /tmp/deepiot-base <commit>
    python scripts/benchmarks/bench_step_revisions.py /tmp/deepiot-base . --rounds 6 --json experiments/compress/bench_step_revisions.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in the child interpreter. Before the compression package, the loop lived in deepiot/trainer.py.
CHILD = """
import json, statistics, sys, time
import torch
torch.set_num_threads(1)
try:
    from deepiot.compression import CompressionConfig, LoopConfig
    from deepiot.compression.step import build_parts, compressor_critic_step, fresh_state
except ImportError:
    from deepiot.trainer import CompressionConfig, LoopConfig, build_parts, compressor_critic_step, fresh_state
from deepiot.models import LeNet5
from deepiot.structure import Structure

iterations, warmup = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
inputs = torch.randn(512, 1, 28, 28)  # [pool, C, H, W]
labels = torch.randint(0, 10, (512,))
model = LeNet5()
config = CompressionConfig(loop=LoopConfig(batch_size=64))
parts = build_parts(model, Structure.from_model(model, inputs[:1]), (inputs, labels), config)
state = fresh_state(parts)
seconds = []
for index in range(warmup + iterations):
    start = time.perf_counter()
    compressor_critic_step(parts, state)
    state.iteration += 1
    if index >= warmup:
        seconds.append(time.perf_counter() - start)
print(json.dumps({"median_ms": 1e3 * statistics.median(seconds)}))
"""


def measure(source: Path, iterations: int, warmup: int) -> float:
    """Median milliseconds per iteration with `source`'s deepiot, in a fresh interpreter."""
    environment = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(iterations), str(warmup)],
        env=environment,
        capture_output=True,
        text=True,
        cwd=source,
    )
    if done.returncode != 0:
        raise SystemExit(f"the measurement with {source} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]


def revision(source: Path) -> str:
    """The git commit checked out in `source` (with "+changes" when its tracked files differ), or "unknown"."""
    head = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(source), "diff", "--quiet", "HEAD"], capture_output=True
    ).returncode
    return head.stdout.strip() + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="source folder of the first revision (e.g. main)")
    parser.add_argument("after", type=Path, help="source folder of the second revision")
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternations (one measurement of each per round)"
    )
    parser.add_argument("--iterations", type=int, default=200, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for source in (args.before, args.after):
        if not (source / "deepiot" / "__init__.py").is_file():
            raise SystemExit(
                f"{source} is not a deepiot source folder: expected {source}/deepiot/__init__.py."
            )
    timings: dict[str, list[float]] = {"before": [], "after": []}
    for round_index in range(args.rounds):
        order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
        for name in order:
            timings[name].append(measure(getattr(args, name).resolve(), args.iterations, args.warmup))
        print(
            f"round {round_index + 1}/{args.rounds}: before {timings['before'][-1]:.2f} ms, after {timings['after'][-1]:.2f} ms"
        )
    before, after = statistics.median(timings["before"]), statistics.median(timings["after"])
    print("| revision | median ms per LeNet-5 compressor-critic iteration (median over rounds) |")
    print("|-|-|")
    print(f"| before ({args.before}) | {before:.2f} |")
    print(f"| after ({args.after}) | {after:.2f} |")
    print(f"after / before = {after / before:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        setting = {
            "model": "LeNet5",
            "batch_size": 64,
            "threads": 1,
            **{k: getattr(args, k) for k in ("rounds", "iterations", "warmup")},
            "revisions": {name: revision(getattr(args, name)) for name in ("before", "after")},
        }
        results = {"before_ms": timings["before"], "after_ms": timings["after"], "ratio": after / before}
        args.json.write_text(json.dumps({"setting": setting, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
