"""Stand-alone ONNX Runtime profiler: times every ONNX file of a suite folder; needs only numpy + onnxruntime.

Copy this one file and a suite folder written by `deepiot-profile stage=suite` to the device (e.g. a
Raspberry Pi) and run

    python ort_profile.py <suite folder> --threads 1 --out timings.json

It never imports torch or deepiot. Each model is warmed up, then timed one call at a time in several
interleaved rounds over the whole suite (a slow drift of a shared machine spreads over all models instead
of landing on whichever ran last); the median and the spread (10th/90th percentiles, median absolute
deviation) are recorded. Bring `timings.json` back and fit with `deepiot-profile stage=fit`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime

SUITE_NAME = "suite.json"
TIMINGS_NAME = "timings.json"
DTYPES = {"float32": np.float32, "int64": np.int64}


def make_session(path: Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU session with `threads` intra-op threads, one inter-op thread and all graph optimisations."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def make_feed(session: onnxruntime.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the session's (static) input shapes; symbolic dimensions become 1 (batch 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for node in session.get_inputs():
        shape = [dim if isinstance(dim, int) else 1 for dim in node.shape]
        feed[node.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def summarise(durations_ms: np.ndarray, warmup: int) -> dict[str, float]:
    """Median, 10th/90th percentiles and median absolute deviation of one model's timed calls."""
    p10, median, p90 = np.percentile(durations_ms, [10, 50, 90])
    mad = float(np.median(np.abs(durations_ms - median)))
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mad_ms": mad,
        "repeats": int(len(durations_ms)),
        "warmup": warmup,
    }


def time_suite(
    files: dict[str, Path], threads: int = 1, warmup: int = 20, repeats: int = 100, rounds: int = 10
) -> dict[str, dict[str, float]]:
    """Time every model of `files` (id → ONNX path) at batch 1: warm-up, then `rounds` interleaved rounds."""
    if repeats < rounds or rounds < 1 or warmup < 0:
        raise ValueError(f"need 1 <= rounds <= repeats and warmup >= 0, got {rounds}, {repeats}, {warmup}")
    calls = {}
    for key, path in files.items():
        session = make_session(path, threads)
        feed = make_feed(session)
        for _ in range(warmup):
            session.run(None, feed)
        calls[key] = (session, feed)
    durations = {key: [] for key in files}
    per_round = np.diff(np.linspace(0, repeats, rounds + 1).astype(int))
    for count in per_round:
        for key, (session, feed) in calls.items():
            for _ in range(count):
                start = time.perf_counter_ns()
                session.run(None, feed)
                durations[key].append((time.perf_counter_ns() - start) / 1e6)
    return {key: summarise(np.asarray(values), warmup) for key, values in durations.items()}


def environment(threads: int) -> dict[str, str | int]:
    """What the timings were measured on."""
    return {
        "runtime": "onnxruntime",
        "runtime_version": onnxruntime.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
    }


def profile_folder(
    suite_dir: Path, threads: int = 1, warmup: int = 20, repeats: int = 100, rounds: int = 10
) -> dict:
    """Time every entry of `<suite_dir>/suite.json` and return the timings document."""
    suite = json.loads((suite_dir / SUITE_NAME).read_text())
    files = {entry["id"]: suite_dir / entry["file"] for entry in suite["entries"]}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the suite names ONNX files that are not there: {missing[:3]}")
    return {
        "environment": environment(threads),
        "settings": {"warmup": warmup, "repeats": repeats, "rounds": rounds},
        "timings": time_suite(files, threads, warmup, repeats, rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ort_profile", description=__doc__.splitlines()[0])
    parser.add_argument("suite_dir", type=Path, help="folder with suite.json and its ONNX files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help=f"default: <suite_dir>/{TIMINGS_NAME}")
    args = parser.parse_args(argv)
    if not (args.suite_dir / SUITE_NAME).is_file():
        parser.error(f"{args.suite_dir} has no {SUITE_NAME}; write one with deepiot-profile stage=suite")
    document = profile_folder(args.suite_dir, args.threads, args.warmup, args.repeats, args.rounds)
    out = args.out or args.suite_dir / TIMINGS_NAME
    out.write_text(json.dumps(document, indent=1))
    print(f"ort_profile: timed {len(document['timings'])} models, wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
