"""Compress your own sensor model with the Python API: a Conv1d + GRU network on real HAPT windows.

    python scripts/examples/example_custom_model.py                 # ~ a few minutes on a 2-core CPU
    python scripts/examples/example_custom_model.py --quick         # a smoke run (used by the tests)

Steps: load the bundled HAPT activity data ([N, T=128, C=6]), train the model for a couple of epochs,
then `deepiot.compress` it (compressor-critic search with a fast threshold schedule, fine-tuning, slicing,
export) and print what is left. The run folder (default outputs/example_custom_model) gets the report,
plots, slicing plan and the TorchScript/ONNX export.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import deepiot
from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.data import load_hapt_activity
from deepiot.finetune import FinetuneConfig


class SensorNet(nn.Module):
    """A user's own model: Conv1d → BN → ReLU (×2) over time, a GRU, the mean over time, a linear head."""

    def __init__(self, channels: int = 6, classes: int = 6, width: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, 5, stride=2, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x.transpose(1, 2))  # [N, T, C] → [N, width, T/4]
        outputs, _ = self.gru(features.transpose(1, 2))  # [N, T/4, hidden]
        return self.head(outputs.mean(dim=1))


def train_briefly(model: nn.Module, dataset, epochs: int, seed: int) -> None:
    """Plain Adam training: the "trained original" that DeepIoT starts from."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for inputs, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (subset, few iterations)")
    parser.add_argument("--out-dir", default="outputs/example_custom_model")
    args = parser.parse_args()

    torch.manual_seed(0)
    bundle = load_hapt_activity(limit=512 if args.quick else None)
    model = SensorNet(channels=bundle.input_shape[-1], classes=bundle.num_classes)
    train_briefly(model, bundle.train, epochs=1 if args.quick else 4, seed=0)

    config = CompressionConfig(
        loop=LoopConfig(
            max_iterations=60 if args.quick else 1500,
            eval_every=20 if args.quick else 100,
        ),
        schedule=ScheduleConfig(every=2 if args.quick else 40),  # τ climbs 10× faster than the paper's
        finetune=FinetuneConfig(steps=20 if args.quick else 600, eval_every=10 if args.quick else 200),
    )
    result = deepiot.compress(
        model,
        bundle.train,
        bundle.val,
        bundle.test,
        config=config,
        out_dir=args.out_dir,
        progress=not args.quick,
    )
    cost, accuracy = result.report["cost"], result.report["accuracy"]
    print(f"params left: {cost['left']['params']:.1%}  MACs left: {cost['left']['macs']:.1%}")
    print(
        f"test accuracy: {accuracy['original_test']:.4f} → {accuracy['compressed_test']:.4f} (sliced model)"
    )
    for group in result.report["groups"]:
        print(f"  {group['name']:>12}: {group['kept']}/{group['original']} kept")
    print(f"export: {result.report['export']['paths']}")


if __name__ == "__main__":
    main()
