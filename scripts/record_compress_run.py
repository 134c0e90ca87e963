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
    print(f"recorded {args.run_dir} → {destination}")


if __name__ == "__main__":
    main()
