"""Copy a finished deepiot-compress run into experiments/compress/<name>/ with its command and commit.

    python scripts/record_compress_run.py outputs/compress/lenet5_mnist_paper lenet5_mnist \
        --command "deepiot-compress experiment=lenet5_mnist compress=paper ..."

Writes README.md (command, commit, settings, results table from report.md), report.json and the two plots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from deepiot.report import KEPT_PLOT, PROGRESS_PLOT, REPORT_JSON, REPORT_MD

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "compress"


def current_commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the deepiot-compress run folder (holds report.json)")
    parser.add_argument("name", help="folder name under experiments/compress/")
    parser.add_argument("--command", required=True, help="the exact command that produced the run")
    parser.add_argument("--commit", default=None, help="commit the run was made at (default: HEAD)")
    parser.add_argument("--notes", default="", help="a paragraph on settings that differ from the paper")
    args = parser.parse_args()

    report = json.loads((args.run_dir / REPORT_JSON).read_text())
    destination = EXPERIMENTS_DIR / args.name
    destination.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_JSON, KEPT_PLOT, PROGRESS_PLOT):
        shutil.copyfile(args.run_dir / name, destination / name)
    settings = "\n".join(
        f"- {section}: " + ", ".join(f"{key}={value}" for key, value in values.items())
        for section, values in report["config"].items()
    )
    table = (args.run_dir / REPORT_MD).read_text().split("\n", 2)[2]  # drop the report's title line
    lines = [
        f"# deepiot-compress: {args.name}",
        "",
        f"Command (commit {args.commit or current_commit()}):",
        "",
        f"    {args.command}",
        "",
        *([args.notes, ""] if args.notes else []),
        "Settings:",
        "",
        settings,
        "",
        "## Results",
        "",
        table,
        f"![kept elements per layer]({KEPT_PLOT})",
        "",
        f"![validation accuracy and size over the iterations]({PROGRESS_PLOT})",
        "",
    ]
    (destination / "README.md").write_text("\n".join(lines))
    write_index()
    print(f"recorded {args.run_dir} → {destination}")


def write_index() -> None:
    """experiments/compress/README.md: one row per recorded run, read from its report.json."""
    rows = [
        "| run | params left | MACs left | host latency left | test accuracy (original → compressed) "
        "| compression wall time (s) | / training time |",
        "|-|-|-|-|-|-|-|",
    ]
    for path in sorted(EXPERIMENTS_DIR.glob(f"*/{REPORT_JSON}")):
        report = json.loads(path.read_text())
        left, accuracy = report["cost"]["left"], report["accuracy"]
        latency = report.get("latency_ms", {}).get("left")
        wall = sum(report["wall_time_s"].values())
        training = report.get("original_training_wall_time_s")
        rows.append(
            f"| [{path.parent.name}]({path.parent.name}/README.md) | {100 * left['params']:.2f}% "
            f"| {100 * left['macs']:.2f}% | {'n/a' if latency is None else f'{100 * latency:.1f}%'} "
            f"| {accuracy['original_test']:.4f} → {accuracy['compressed_test']:.4f} | {wall:.0f} "
            f"| {'n/a' if not training else f'{wall / training:.1f}×'} |"
        )
    header = "# deepiot-compress runs\n\nWritten by scripts/record_compress_run.py from each run's report.json.\n\n"
    (EXPERIMENTS_DIR / "README.md").write_text(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
