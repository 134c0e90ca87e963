"""How long does ONNX export of a small recurrent model take, per exporter? Before/after of the "auto" choice.

`deepiot.export.export_model` with `onnx_exporter="auto"` used to try the dynamo exporter first for every
model; it now picks the TorchScript-based one for models with recurrent layers (`auto_onnx_exporters`).
This script times the whole `export_model` call (ONNX only, with its ONNX Runtime check on batch sizes 1
and 3) for tiny recurrent models — as a compression run exports them: the original classifiers and a
sliced StackedRNN — with `onnx_exporter="dynamo"` (the old default) and `"auto"` (the new one), and
prints the ratio. Both must pass the same check; a failure raises.

Usage (from the repository root; the dynamo exports take a minute or more on a small CPU):
    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_onnx_export.py [--models gru lstm] [--out FILE.json]

Measured on the project's shared 2-core machine (torch 2.13 CPU, 1 thread; seconds per checked export,
dynamo before → auto after): gru 13.97 → 0.11 (131×; the first export also pays dynamo's warm-up),
gru_hapt_window 31.97 → 0.08 (381×), lstm 6.11 → 0.13 (48×), sliced_lstm 8.57 → 0.08 (102×); both
exporters pass the same ONNX Runtime check (max |diff| ≤ 6e-8).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepiot.export import export_model
from deepiot.models import LSTMClassifier
from deepiot.structure import Structure, slice_model


class ConvGRU(nn.Module):
    """The `deepiot.compress` docstring's sensor model: conv over time → GRU → mean → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, 5, padding=2)
        self.gru = nn.GRU(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.transpose(1, 2)))  # [N, 16, T]
        out, _ = self.gru(h.transpose(1, 2))  # [N, T, 24]
        return self.fc(out.mean(dim=1))


def _sliced_lstm() -> nn.Module:
    """A 2-layer LSTM classifier sliced to different layer widths (a StackedLSTM, as compression leaves it)."""
    model = LSTMClassifier(input_shape=(32, 6), hidden_size=16, num_layers=2).eval()
    structure = Structure.from_model(model, torch.randn(2, 32, 6))
    return slice_model(model, structure, {"lstm.l0": list(range(9)), "lstm.l1": list(range(5))}).eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "gru": (ConvGRU, (32, 6)),
    "gru_hapt_window": (ConvGRU, (128, 6)),  # a HAPT window: 128 steps
    "lstm": (lambda: LSTMClassifier(input_shape=(32, 6), hidden_size=16, num_layers=2), (32, 6)),
    "sliced_lstm": (_sliced_lstm, (32, 6)),
}


def time_export(model: nn.Module, example: torch.Tensor, exporter: str) -> tuple[float, str, float]:
    """Seconds of one checked ONNX export, the exporter that wrote the file, and its max |diff| to PyTorch."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = export_model(
            model,
            example,
            Path(folder) / "export",
            manifest_extra={},
            formats=["onnx"],
            onnx_exporter=exporter,
        )
        seconds = time.perf_counter() - start
        manifest = json.loads(result.paths["manifest"].read_text())
    return seconds, manifest["onnx"]["exporter"], result.max_abs_diff["onnx"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {}
    for name in args.models:
        constructor, shape = MODELS[name]
        model, example = constructor().eval(), torch.randn(1, *shape)
        before = time_export(model, example, "dynamo")
        after = time_export(model, example, "auto")
        rows[name] = {
            "before_dynamo_s": round(before[0], 2),
            "after_auto_s": round(after[0], 2),
            "after_exporter": after[1],
            "ratio_before_over_after": round(before[0] / after[0], 1),
            "max_abs_diff": {"before": before[2], "after": after[2]},
        }
        print(
            f"{name:12s} dynamo {before[0]:7.2f} s | auto ({after[1]}) {after[0]:6.2f} s | "
            f"ratio {before[0] / after[0]:6.1f}x | max|diff| {before[2]:.1e} / {after[2]:.1e}",
            flush=True,
        )
    record = {
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "models": rows,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
