"""Cost of one DeepIoT compressor-critic iteration vs one plain training step, on the reference models.

Both steps run on the same model, batch size and thread count, alternating in rounds so that load from other
processes on a shared machine hits both alike. A compressor-critic iteration (docs/design.md §2) is: a critic step
under sampled masks + a compressor forward over all weight matrices, a masked forward of a fresh batch, the
REINFORCE update + one more compressor forward (step 3). Inputs are random tensors of the real shapes (time
does not depend on the values).

    python scripts/benchmarks/bench_step.py                        # all models, 1 thread
    python scripts/benchmarks/bench_step.py --models lenet5 --steps 200 --json experiments/compress/bench_step.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deepiot.compression import CompressionConfig, LoopConfig
from deepiot.compression.step import build_parts, compressor_critic_step, fresh_state
from deepiot.models import DeepSense, LeNet5, LeNet300, LSTMClassifier
from deepiot.structure import Structure

MODELS = {  # name → (class, input shape of one sample, classes)
    "lenet300": (LeNet300, (1, 28, 28), 10),
    "lenet5": (LeNet5, (1, 28, 28), 10),
    "deepsense": (DeepSense, (128, 6), 6),
    "lstm": (LSTMClassifier, (128, 6), 6),
}


def bench(name: str, steps: int, rounds: int, batch_size: int) -> dict[str, float]:
    """Median seconds per plain step and per compressor-critic iteration, and their ratio."""
    model_class, input_shape, classes = MODELS[name]
    torch.manual_seed(0)
    inputs = torch.randn(8 * batch_size, *input_shape)  # [pool, *input_shape]
    labels = torch.randint(0, classes, (8 * batch_size,))
    plain_model = model_class(input_shape=input_shape, num_classes=classes).train()
    optimizer = torch.optim.Adam(plain_model.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=5e-4)
    critic = model_class(input_shape=input_shape, num_classes=classes)
    config = CompressionConfig(loop=LoopConfig(batch_size=batch_size))
    parts = build_parts(critic, Structure.from_model(critic, inputs[:1]), (inputs, labels), config)
    state = fresh_state(parts)

    def plain_step() -> None:
        batch = torch.randint(0, len(labels), (batch_size,))
        loss = F.cross_entropy(plain_model(inputs[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def compressor_critic_iteration() -> None:
        compressor_critic_step(parts, state)
        state.iteration += 1

    timings: dict[str, list[float]] = {"plain": [], "compressor_critic": []}
    for call in (plain_step, compressor_critic_iteration):  # warm-up
        for _ in range(5):
            call()
    for _ in range(rounds):
        for key, call in (("plain", plain_step), ("compressor_critic", compressor_critic_iteration)):
            for _ in range(steps // rounds):
                start = time.perf_counter()
                call()
                timings[key].append(time.perf_counter() - start)
    plain, iteration = float(np.median(timings["plain"])), float(np.median(timings["compressor_critic"]))
    return {
        "plain_step_ms": 1e3 * plain,
        "compressor_critic_step_ms": 1e3 * iteration,
        "ratio": iteration / plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each kind per model")
    parser.add_argument("--rounds", type=int, default=10, help="alternations between the two kinds of step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: bench(name, args.steps, args.rounds, args.batch_size) for name in args.models}
    print(f"batch {args.batch_size}, {args.threads} thread(s), median of {args.steps} steps each")
    print("| model | plain training step (ms) | compressor-critic iteration (ms) | ratio |")
    print("|-|-|-|-|")
    for name, row in results.items():
        print(
            f"| {name} | {row['plain_step_ms']:.2f} | {row['compressor_critic_step_ms']:.2f} | {row['ratio']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        setting = {"batch_size": args.batch_size, "threads": args.threads, "steps": args.steps}
        args.json.write_text(json.dumps({"setting": setting, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
