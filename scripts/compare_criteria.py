"""Which within-group criterion picks elements best at fixed counts: the BatchNorm-folded L1 (magnitude's
criterion), the raw fan-in L1 (Li et al., ICLR 2017) or |γ| of the group's BatchNorm (Network Slimming), each
fine-tuned with the experiment's recipe from the fold's original; prints one JSON line per criterion.

    python scripts/compare_criteria.py --run-dir outputs/reproduce/deepsense_hapt_activity/fold0 \\
        --counts-from equal/magnitude_floor/params0.03/seed0/result.json --criteria folded,raw,gamma \\
        experiment=deepsense_hapt_activity data.dataset.fold=0

`--run-dir` is a harness fold folder (`<runs_dir>/<task>/fold<k>`, its original in `original/train/model.pt`);
`--counts-from` a finished run's result.json (relative to it) whose `kept_counts` are used. Results in
docs/design.md §5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

import torch

from deepiot.baselines import prune
from deepiot.checkpoint import load_trained_model
from deepiot.cli.baseline import compose_baseline_config, finetune_config
from deepiot.structure.graph import Structure
from deepiot.train import load_bundle

CRITERIA = ("folded", "raw", "gamma")


def criterion(name: str):
    """Structure.l1_importance for `name`: the folded L1 as shipped, the raw weight L1, or |γ| (raw L1 where the
    group has no BatchNorm)."""
    folded = Structure.l1_importance

    def raw(structure: Structure, model: torch.nn.Module, group: str) -> torch.Tensor:
        return structure.weight_matrix(model, group).abs().sum(dim=0)

    def gamma(structure: Structure, model: torch.nn.Module, group: str) -> torch.Tensor:
        norm = structure.batchnorm_of(model, group)
        return raw(structure, model, group) if norm is None else norm.weight.detach().abs()

    return {"folded": folded, "raw": raw, "gamma": gamma}[name]


def fail(message: str) -> NoReturn:
    """One `compare_criteria: error: ...` paragraph on stderr, exit status 2 (before any work)."""
    print(f"compare_criteria: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help).")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def criteria_list(text: str) -> list[str]:
    names = text.split(",")
    if not text or any(name not in CRITERIA for name in names):
        raise argparse.ArgumentTypeError(
            f"expected a non-empty comma-separated subset of {list(CRITERIA)}, got {text!r}"
        )
    return names


def kept_counts(path: Path) -> dict[str, int]:
    """The `kept_counts` of a finished run's result.json (fail() with what was expected otherwise)."""
    try:
        counts = json.loads(path.read_text())["kept_counts"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f'--counts-from {path} is not a finished run\'s result.json with "kept_counts" ({error!r}).')
    if not counts or not all(isinstance(n, int) and n >= 0 for n in counts.values()):
        fail(f"--counts-from {path}: kept_counts must map groups to counts ≥ 0, got {counts!r}.")
    return counts


def main() -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--counts-from", required=True)
    parser.add_argument("--criteria", type=criteria_list, default=list(CRITERIA))
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the baseline config")
    args = parser.parse_args()
    original_path = args.run_dir / "original" / "train" / "model.pt"
    if not original_path.is_file():
        fail(f"--run-dir {args.run_dir} has no original/train/model.pt; expected a harness fold folder.")
    counts = kept_counts(args.run_dir / args.counts_from)
    torch.set_num_threads(args.threads)
    config = compose_baseline_config(
        [*args.overrides, f"paths.original_dir={original_path.parent}", "method=magnitude"]
    )
    bundle, recipe = load_bundle(config), finetune_config(config)
    shipped = Structure.l1_importance
    try:
        for name in args.criteria:
            Structure.l1_importance = criterion(name)
            model, _ = load_trained_model(original_path)
            result = prune(model, bundle.train, bundle.val, bundle.test, method="magnitude", counts=counts,
                           finetune_config=recipe, seed=0)  # fmt: skip
            print(json.dumps({"criterion": name, **result.report["accuracy"]}), flush=True)
    finally:
        Structure.l1_importance = shipped


if __name__ == "__main__":
    main()
