"""Table of deepiot-compress runs over seeds (mean ± std): DeepIoT's accuracy against the original and, for runs
made with `compress.compare_magnitude=true`, against L1 magnitude at the same per-group counts (same recipe, as
many fine-tuning steps as the critic got in all; "—" for runs without it).

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
    original = [report["accuracy"]["original_test"] for report in reports]
    deepiot = [report["accuracy"]["compressed_test"] for report in reports]
    loss = [o - d for o, d in zip(original, deepiot, strict=True)]
    left = [report["cost"]["left"]["params"] for report in reports]
    counts = ["-".join(str(group["kept"]) for group in report["groups"]) for report in reports]
    recipe = sorted(
        {f"{r['finetune_iterations']} steps, lr {r['config']['finetune']['lr']:g}" for r in reports}
    )
    times = [sum(report["wall_time_s"].values()) for report in reports]
    magnitude, gap = "—", "—"
    if all("magnitude_at_same_counts" in report for report in reports):
        same_counts = [report["magnitude_at_same_counts"]["test_accuracy"] for report in reports]
        magnitude = mean_std(same_counts)
        gap = mean_std([d - m for d, m in zip(deepiot, same_counts, strict=True)])
    return (
        f"| {label} | {len(reports)} | {mean_std(left)}% | {', '.join(counts)} | {'; '.join(recipe)} | "
        f"{mean_std(original)} | {mean_std(deepiot)} | {mean_std(loss)} | {magnitude} | {gap} | "
        f"{statistics.mean(times):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=<folder>,<folder>,... (one folder per seed)")
    parser.add_argument("--out", type=Path, help="Markdown file whose comparison block is replaced")
    args = parser.parse_args()
    lines = [
        "| run | seeds | params left | kept per group (each seed) | fine-tuning | original test % | "
        "DeepIoT test % | loss (points) | magnitude, same counts, test % | DeepIoT − magnitude (points) | "
        "DeepIoT wall time (s) |",
        "|-|-|-|-|-|-|-|-|-|-|-|",
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
