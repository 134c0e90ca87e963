"""One fine-tuning recipe for every method that fine-tunes (DeepIoT and the baselines), on the sliced model.

`finetune(model, train, val, config)` takes `config.steps` Adam steps on seeded mini-batches (cosine or
constant learning rate), optionally distilling from a teacher (loss = (1−a)·CE + a·T²·KL(teacher ‖ student)),
validates every `eval_every` steps and hands back the best-validation weights. With `state_path` the whole
state is checkpointed atomically at every evaluation and rerunning the same call resumes bit-identically.
`weight_masks` holds chosen weights at exactly zero throughout (unstructured pruning's fixed mask).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from deepiot import runtime
from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.utils import DIVERGED_LOSS, ConfigError, describe_differences

if TYPE_CHECKING:
    from deepiot.baselines.unstructured import GradualPruning

log = logging.getLogger(__name__)

STATE_KIND = "finetune_state"
SCHEDULES = ("cosine", "constant")


class FinetuneError(runtime.CompressionError):
    """Fine-tuning cannot continue (a non-finite loss); the message says where and what to try."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The shared fine-tuning recipe (Adam; lr cosine to 0 over `steps` or constant; distillation from the
    original). The defaults are configs/finetune/recipe.yaml's (tests/test_defaults.py holds them equal);
    `distill_weight=0.0` fine-tunes on the labels only, without a teacher."""

    steps: int = 3000  # optimizer steps (batches); 0 only validates the given weights
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's; the paper's critic: (0.5, 0.9)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (to 0 over `steps`) | "constant"
    distill_weight: float = 0.5  # a in (1−a)·CE(labels) + a·T²·KL(softmax(teacher/T) ‖ softmax(student/T))
    temperature: float = 4.0
    eval_every: int = 500  # validate; keep the best-validation weights
    eval_batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_every", "eval_batch_size"):
            _require(name, getattr(self, name), getattr(self, name) > 0, "a positive integer")
        _require("steps", self.steps, self.steps >= 0, "an integer >= 0")
        _require("seed", self.seed, self.seed >= 0, "an integer >= 0")
        _require("lr", self.lr, self.lr > 0, "a positive learning rate, e.g. 1e-3")
        _require(
            "betas",
            self.betas,
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "two numbers in [0, 1)",
        )
        _require("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0")
        _require("schedule", self.schedule, self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        _require("distill_weight", self.distill_weight, 0.0 <= self.distill_weight <= 1.0, "in [0, 1]")
        _require("temperature", self.temperature, self.temperature > 0, "a positive number, e.g. 4")


def _require(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"finetune.{key} must be {expected}, got {value!r}.")


class FinetuneResult(NamedTuple):
    """The fine-tuned model (best-validation weights loaded), that accuracy and the evaluation history."""

    model: nn.Module
    best_val_accuracy: float
    history: list[dict[str, float]]  # step, train_loss (mean since the last evaluation), val_accuracy, lr


def learning_rate(config: FinetuneConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based); cosine reaches exactly 0 at `config.steps`."""
    if config.schedule == "constant" or config.steps == 0:
        return config.lr
    progress = min(step, config.steps) / config.steps
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress)) if progress < 1.0 else 0.0


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, weight: float, temperature: float
) -> Tensor:
    """(1−a)·CE(student, labels) + a·T²·KL(softmax(teacher/T) ‖ softmax(student/T)), batch-mean (Hinton et al.).

    The T² factor keeps the soft term's gradient on the scale of the hard term's as T changes.
    """
    hard = F.cross_entropy(student_logits, labels)
    if weight == 0.0:
        return hard
    if teacher_logits is None:
        raise ValueError("distillation_loss got weight > 0 but no teacher logits.")
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),  # [N, classes]
        F.log_softmax(teacher_logits / temperature, dim=1),  # [N, classes]
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard + weight * temperature**2 * soft


@dataclass
class FinetuneState:
    """Where fine-tuning stands; saved with the model, optimizer and batch order at every evaluation."""

    step: int = 0
    best_val_accuracy: float = -1.0
    best_step: int = 0
    loss_sum: float = 0.0  # training losses since the last evaluation
    loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def finetune(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    state_path: str | Path | None = None,
    weight_masks: Mapping[str, Tensor] | None = None,
    pruning: GradualPruning | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of `model` on `train` with the shared recipe; `model` itself is left untouched.

    Args:
        model: the (sliced) classifier to fine-tune; outputs logits [N, classes].
        train, val: (inputs, labels) tensors.
        config: the recipe (defaults: 3000 Adam steps, lr 1e-3 cosine to 0, distillation weight 0.5, T = 4).
        teacher: the original model, required when `config.distill_weight > 0` (run in eval mode, no grad).
        state_path: checkpoint file for resuming (written atomically at every evaluation).
        weight_masks: {parameter name: 0/1 tensor}; masked-out weights are held at exactly 0.
        pruning: gradual pruning during fine-tuning (`deepiot.baselines.unstructured.GradualPruning`): its masks
            replace `weight_masks` on its schedule, and only steps at its final sparsity can be the best.
        progress: show a tqdm progress bar.
        device: where to fine-tune (see `runtime.resolve_device`); None: the model's device. The tensors
            are moved there; the fine-tuned model comes back on it.

    Returns:
        FinetuneResult(model with the best-validation weights, best validation accuracy, history).
    """
    config = config or FinetuneConfig()
    check_inputs(train, config, teacher)
    device = runtime.model_device(model) if device is None else runtime.resolve_device(device)
    student = copy.deepcopy(model).to(device)
    train, val = on_device(train, device), on_device(val, device)
    masks = {name: mask.to(device) for name, mask in (weight_masks or {}).items()}
    apply_weight_masks(student, masks)
    optimizer = torch.optim.Adam(
        student.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    torch.manual_seed(config.seed)  # dropout and friends draw from the global generator
    batches = runtime.BatchStream(*train, config.batch_size, seed=config.seed)
    soft_targets = None  # the teacher's logits of every training sample [N, classes], computed once
    if config.distill_weight > 0.0 and teacher is not None:
        teacher_inputs = train[0].to(runtime.model_device(teacher))
        soft_targets = runtime.predict_logits(teacher, teacher_inputs, config.eval_batch_size).to(device)
    state = FinetuneState()
    best_weights = clone_state(student)
    path = Path(state_path) if state_path is not None else None
    saved = read_saved_state(path, config) if path is not None else None
    if saved is not None:
        best_weights = restore(saved, student, optimizer, batches, state)
        log.info("resuming fine-tuning from %s at step %d", path, state.step)
        if pruning is not None and state.step > 0:
            masks = pruning.masks_of(student)
    else:
        validate(student, val, config, state, best_weights)
    bar = tqdm(total=config.steps, initial=state.step, desc="fine-tune", disable=not progress)
    while state.step < config.steps:
        if pruning is not None and (update := pruning.masks_at(student, state.step)) is not None:
            masks = {name: mask.to(device) for name, mask in update.items()}
            apply_weight_masks(student, masks)
            if state.step == pruning.end_step:  # the final sparsity: only from here on can a step be the best
                state.best_val_accuracy = -1.0
        loss = train_step(student, optimizer, batches, config, state.step, soft_targets, masks)
        state.loss_sum, state.loss_count, state.step = (
            state.loss_sum + loss,
            state.loss_count + 1,
            state.step + 1,
        )
        bar.update(1)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            validate(student, val, config, state, best_weights)
            if path is not None:
                save_checkpoint(state_payload(config, student, optimizer, batches, state, best_weights), path)
    bar.close()
    student.load_state_dict(best_weights)
    return FinetuneResult(student.eval(), state.best_val_accuracy, list(state.history))


def train_step(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: runtime.BatchStream,
    config: FinetuneConfig,
    step: int,
    soft_targets: Tensor | None,
    masks: Mapping[str, Tensor],
) -> float:
    """One Adam step at the scheduled learning rate; masked weights stay exactly 0."""
    indices = batches.next_indices()
    inputs, labels = batches.inputs[indices], batches.labels[indices]
    teacher_logits = None if soft_targets is None else soft_targets[indices]  # [B, classes]
    student.train()
    loss = distillation_loss(
        student(inputs), teacher_logits, labels, config.distill_weight, config.temperature
    )
    if not torch.isfinite(loss) or float(loss.detach()) > DIVERGED_LOSS:
        raise FinetuneError(
            f"the fine-tuning loss became {float(loss.detach())} at step {step + 1} of {config.steps} (expected a "
            f"finite loss below {DIVERGED_LOSS:g}: fine-tuning diverged). With a state_path the last evaluation's "
            "state is still on disk. Lower finetune.lr, or check the data and the model for NaN/inf values."
        )
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mask_gradients(student, masks)
    optimizer.step()
    apply_weight_masks(student, masks)
    return float(loss.detach())


def validate(
    student: nn.Module,
    val: tuple[Tensor, Tensor],
    config: FinetuneConfig,
    state: FinetuneState,
    best_weights: dict[str, Tensor],
) -> None:
    """Validate, append to the history and keep the weights when they are the best so far (ties: earliest)."""
    val_accuracy = runtime.accuracy(student, *val, config.eval_batch_size)
    record: dict[str, float] = {
        "step": state.step,
        "val_accuracy": val_accuracy,
        "lr": learning_rate(config, state.step),
    }
    if state.loss_count:
        record["train_loss"] = state.loss_sum / state.loss_count
    state.loss_sum, state.loss_count = 0.0, 0
    state.history.append(record)
    if val_accuracy > state.best_val_accuracy:
        state.best_val_accuracy, state.best_step = val_accuracy, state.step
        best_weights.update(clone_state(student))
    log.info(
        "fine-tune step %d/%d: train loss %s, val accuracy %.4f (best %.4f at step %d), lr %.3g",
        state.step,
        config.steps,
        f"{record['train_loss']:.4f}" if "train_loss" in record else "-",
        val_accuracy,
        state.best_val_accuracy,
        state.best_step,
        record["lr"],
    )


# ---------------------------------------------------------------------------------------------- helpers


def check_inputs(train: tuple[Tensor, Tensor], config: FinetuneConfig, teacher: nn.Module | None) -> None:
    """Refuse a training set smaller than a batch and distillation without a teacher."""
    if len(train[1]) < config.batch_size:
        raise ValueError(
            f"the training set has {len(train[1])} samples, fewer than one batch (finetune.batch_size="
            f"{config.batch_size}); use more data or a smaller batch size."
        )
    if config.distill_weight > 0.0 and teacher is None:
        raise ValueError(
            f"finetune.distill_weight is {config.distill_weight} but no teacher was given; pass teacher=<the "
            "original model> or set finetune.distill_weight=0."
        )


def on_device(tensors: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    inputs, labels = tensors
    return inputs.to(device), labels.to(device)


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def mask_gradients(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the gradients of masked-out weights, so Adam's moments for them stay 0 too."""
    for name, parameter in model.named_parameters():
        if name in masks and parameter.grad is not None:
            parameter.grad.mul_(masks[name])


@torch.no_grad()
def apply_weight_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Set masked-out weights to exactly 0; a mask naming no parameter is an error."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in parameters or parameters[name].shape != mask.shape:
            raise ValueError(
                f"weight mask {name!r} does not match a parameter of {type(model).__name__} "
                f"(mask shape {tuple(mask.shape)}); masks are keyed by model.named_parameters() names."
            )
        parameters[name].mul_(mask)


def state_payload(
    config: FinetuneConfig,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: runtime.BatchStream,
    state: FinetuneState,
    best_weights: Mapping[str, Tensor],
) -> dict[str, Any]:
    """Everything a bit-identical resume needs, as a "finetune_state" checkpoint."""
    return {
        "kind": STATE_KIND,
        "config": asdict(config),
        "state_dict": student.state_dict(),
        "best_state_dict": dict(best_weights),
        "optimizer": optimizer.state_dict(),
        "batches": batches.state_dict(),
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": cuda_rng_state(student),  # dropout on a CUDA device draws from its own generator
        "loop": asdict(state),
        "metrics": {"best_val_accuracy": state.best_val_accuracy, "step": float(state.step)},
    }


def cuda_rng_state(model: nn.Module) -> Tensor | None:
    """The CUDA generator state of the model's device (None off CUDA)."""
    device = runtime.model_device(model)
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def read_saved_state(path: Path, config: FinetuneConfig) -> dict[str, Any] | None:
    """The saved fine-tuning state at `path`, if any; ConfigError when it was written with another recipe."""
    if not path.is_file():
        return None
    saved = load_checkpoint(path, kind=STATE_KIND)
    if saved["config"] != asdict(config):
        raise ConfigError(
            f"cannot resume fine-tuning from {path}: it was written with another recipe "
            f"({describe_differences(saved['config'], asdict(config))}). Use another folder or delete the file."
        )
    return saved


def restore(
    saved: Mapping[str, Any],
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: runtime.BatchStream,
    state: FinetuneState,
) -> dict[str, Tensor]:
    """Load the saved model, optimizer, batch order, RNG and loop state; returns the best weights so far."""
    try:
        student.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"the saved fine-tuning state does not fit {type(student).__name__} (another kept set?): "
            f"{str(err).splitlines()[0]}. Use another folder or delete the state file."
        ) from err
    optimizer.load_state_dict(saved["optimizer"])
    batches.load_state_dict(saved["batches"])
    torch.set_rng_state(saved["rng_state"])
    device = runtime.model_device(student)
    if device.type == "cuda" and saved.get("cuda_rng_state") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng_state"], device)
    for key, value in saved["loop"].items():
        setattr(state, key, value)
    return dict(saved["best_state_dict"])
