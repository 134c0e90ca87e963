"""The CPU a run or a measurement was made on, as a reader of a results table needs it.

fp32 kernels differ between CPU models and vector instruction levels (AVX2, AVX-512) in how they round, so a
run repeated on another machine can end a few points away on a small validation split (a different best
checkpoint), and its measured latency is the machine's. Tables that mix machines say so (`deepiot.cli.harness`).
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_description() -> str:
    """'Intel(R) Xeon(R) Processor (AVX512)': the CPU's model name (Linux's /proc/cpuinfo, else
    `platform.processor()`) and the vector instruction level torch's CPU kernels use on it."""
    name = ""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
                break
    name = " ".join(name.split()) or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"
