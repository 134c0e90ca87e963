"""Overhead of a masked critic training step vs a plain one (LeNet-5 and DeepSense at paper widths).

One step = forward + backward + Adam step on a batch of 64; the masked step also samples fresh per-sample
masks (keep prob 0.5) for every group. Plain and masked steps alternate so both see the same machine load.

    python scripts/benchmarks/bench_masking.py [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from deepiot.models import DeepSense, LeNet5
from deepiot.structure import MaskedNetwork, Structure, sample_masks

BATCH = 64


def _step_functions(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    """(plain step, masked step) sharing one model and one Adam optimizer."""
    structure = Structure.from_model(model, x[:2])
    masked = MaskedNetwork(model, structure)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    keep_probs = {group.name: torch.full((group.size,), 0.5) for group in structure.groups}
    loss_function = nn.CrossEntropyLoss()

    def plain() -> None:
        optimizer.zero_grad()
        loss_function(model(x), y).backward()
        optimizer.step()

    def with_masks() -> None:
        optimizer.zero_grad()
        loss_function(masked(x, sample_masks(keep_probs, len(x))), y).backward()
        optimizer.step()

    return plain, with_masks


def _time(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def bench(name: str, model: nn.Module, x: Tensor, y: Tensor, steps: int) -> tuple[str, float, float]:
    """Median seconds per plain and per masked step, measured alternately."""
    model.train()
    plain, with_masks = _step_functions(model, x, y)
    for _ in range(3):  # warm-up
        plain(), with_masks()
    plain_times, masked_times = [], []
    for _ in range(steps):
        plain_times.append(_time(plain))
        masked_times.append(_time(with_masks))
    return name, float(torch.tensor(plain_times).median()), float(torch.tensor(masked_times).median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [
        ("LeNet-5", LeNet5(), torch.randn(BATCH, 1, 28, 28), torch.randint(10, (BATCH,))),
        ("DeepSense", DeepSense(), torch.randn(BATCH, 128, 6), torch.randint(6, (BATCH,))),
    ]
    print(
        f"batch {BATCH}, {args.steps} steps, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    )
    print(f"{'model':<10} {'plain ms/step':>14} {'masked ms/step':>15} {'ratio':>6}")
    for name, model, x, y in cases:
        _, plain, masked = bench(name, model, x, y, args.steps)
        print(f"{name:<10} {plain * 1e3:>14.1f} {masked * 1e3:>15.1f} {masked / plain:>6.2f}")


if __name__ == "__main__":
    main()
