"""Summarise int8 exports: one Markdown row per export folder from its manifest's "int8" record.

python scripts/int8_table.py name=path/to/export [name=path ...] [--copy-manifests experiments/device/int8]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HEADER = (
    "| model | fp32 accuracy | int8 accuracy | loss (points) | file fp32 → int8 | weights fp32 → int8 "
    "| batch-1 latency fp32 → int8 (ms, median) |\n|---|---|---|---|---|---|---|"
)


def row(name: str, record: dict) -> str:
    fp32, int8 = record["fp32"], record["int8"]
    return (
        f"| {name} | {100 * fp32['test_accuracy']:.2f}% | {100 * int8['test_accuracy']:.2f}% "
        f"| {record['accuracy_drop_points']:.2f} | {fp32['bytes'] / 1024:.1f} → {int8['bytes'] / 1024:.1f} KiB "
        f"({record['size_ratio']:.2f}×) | {fp32['weight_bytes'] / 1024:.1f} → {int8['weight_bytes'] / 1024:.1f} KiB "
        f"({record['weight_size_ratio']:.2f}×) | {fp32['latency_ms']:.4f} → {int8['latency_ms']:.4f} "
        f"(×{record['latency_ratio']:.2f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="name=export folder (with manifest.json holding 'int8')")
    parser.add_argument(
        "--copy-manifests", type=Path, default=None, help="copy each manifest to <dir>/<name>.json"
    )
    args = parser.parse_args()
    lines = [HEADER]
    for item in args.exports:
        name, folder = item.split("=", 1)
        manifest_path = Path(folder) / "manifest.json"
        lines.append(row(name, json.loads(manifest_path.read_text())["int8"]))
        if args.copy_manifests:
            args.copy_manifests.mkdir(parents=True, exist_ok=True)
            shutil.copy(manifest_path, args.copy_manifests / f"{name}.json")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
