"""Fine-tune a finished deepiot-compress run's kept set again with another recipe, to separate what the search
contributes (the per-group counts, the chosen elements, the critic's weights) from what fine-tuning does.

    python scripts/refinetune.py outputs/exp/L198_s0 experiment=lenet5_mnist --start critic --lr 0.003
    python scripts/refinetune.py outputs/exp/LSTM_s0 experiment=lstm_hapt_activity --start original

--start critic: the critic's weights at the end of the search (what deepiot-compress fine-tunes);
--start original: the original's weights at the same kept elements (rewind); --start magnitude: the original's
largest-L1 elements at the same per-group counts. Prints one line of results (test accuracy of the
best-validation weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from deepiot.checkpoint import load_checkpoint, load_trained_model
from deepiot.cli import compose_config
from deepiot.cli.train import ensure_trained
from deepiot.compression import STATE_FILE
from deepiot.finetune import FinetuneConfig, finetune
from deepiot.runtime import accuracy, dataset_tensors
from deepiot.structure import Structure, slice_model
from deepiot.train import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished deepiot-compress run folder (holds compress_state.pt)")
    parser.add_argument("overrides", nargs="*", help="the run's Hydra overrides that pick the data and model")
    parser.add_argument("--start", choices=("critic", "original", "magnitude"), default="critic")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--distill", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_config([*args.overrides, "paths.output_dir=/tmp/refinetune"])
    original, _ = load_trained_model(ensure_trained(cfg))
    bundle = load_bundle(cfg)
    splits = zip((bundle.train, bundle.val, bundle.test), ("train", "val", "test"), strict=True)
    train, val, test = (dataset_tensors(split, name) for split, name in splits)
    saved = load_checkpoint(f"{args.run}/{STATE_FILE}", kind="compression_state")
    kept = saved["loop"]["kept"]
    structure = Structure.from_model(original, train[0][:1])
    source = original
    if args.start == "critic":
        source, _ = load_trained_model(ensure_trained(cfg))
        source.load_state_dict(saved["state_dict"])
    elif args.start == "magnitude":
        kept = {
            name: structure.largest_l1_elements(original, name, len(indices))
            for name, indices in kept.items()
        }
    recipe = FinetuneConfig(
        steps=args.steps, lr=args.lr, distill_weight=args.distill, seed=args.seed, eval_every=500
    )
    started = time.perf_counter()
    tuned = finetune(slice_model(source.eval(), structure, kept), train, val, recipe, teacher=original)
    counts = "-".join(str(len(indices)) for indices in kept.values())
    print(
        f"{args.run} start={args.start} kept={counts} steps={args.steps} lr={args.lr} distill={args.distill} "
        f"seed={args.seed}: val {tuned.best_val_accuracy:.4f} test {accuracy(tuned.model, *test, 512):.4f} "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
