"""Table of deepiot-compress runs made with `compress.compare_magnitude=true`: DeepIoT against L1 magnitude at the
same per-group counts (same recipe, as many fine-tuning steps as the critic got in all), mean ± std over seeds.

    python scripts/compare_with_magnitude.py "LeNet-5, 1.98%"=outputs/exp/L198_s0,outputs/exp/L198_s1 \
        --out experiments/search/README.md

Each argument is `label=<run folder>,<run folder>,...` (one folder per seed); the table goes to stdout, or
replaces the block between the markers in --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BEGIN, END = "<!-- comparison:begin -->", "<!-- comparison:end -->"


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def row(label: str, folders: list[Path]) -> str:
    reports = [json.loads((folder / "report.json").read_text()) for folder in folders]
    missing = [
        str(folder)
        for folder, report in zip(folders, reports, strict=True)
        if "magnitude_at_same_counts" not in report
    ]
    if missing:
        raise SystemExit(f"runs without compare_magnitude: {missing}")
    original = [report["accuracy"]["original_test"] for report in reports]
    deepiot = [report["accuracy"]["compressed_test"] for report in reports]
    magnitude = [report["magnitude_at_same_counts"]["test_accuracy"] for report in reports]
    left = [report["cost"]["left"]["params"] for report in reports]
    counts = ["-".join(str(group["kept"]) for group in report["groups"]) for report in reports]
    gap = [d - m for d, m in zip(deepiot, magnitude, strict=True)]
    times = [sum(report["wall_time_s"].values()) for report in reports]
    return (
        f"| {label} | {len(reports)} | {mean_std(left)}% | {', '.join(counts)} | {mean_std(original)} | "
        f"{mean_std(deepiot)} | {mean_std(magnitude)} | {mean_std(gap)} | {statistics.mean(times):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=<folder>,<folder>,... (one folder per seed)")
    parser.add_argument("--out", type=Path, help="Markdown file whose comparison block is replaced")
    args = parser.parse_args()
    lines = [
        "| run | seeds | params left | kept per group (each seed) | original test % | DeepIoT test % | "
        "magnitude, same counts, test % | DeepIoT − magnitude (points) | DeepIoT wall time (s) |",
        "|-|-|-|-|-|-|-|-|-|",
    ]
    for spec in args.runs:
        label, _, folders = spec.partition("=")
        lines.append(row(label, [Path(folder) for folder in folders.split(",")]))
    table = "\n".join(lines)
    if args.out is None:
        print(table)
        return
    text = args.out.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    args.out.write_text(text[:start] + "\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
