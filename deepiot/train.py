"""Train an original (uncompressed) model: the pure `train(cfg) -> metrics` behind `deepiot-train`.

One run is one folder, `cfg.paths.output_dir`:
  last.pt       resume state (model, optimizer, scheduler, epoch, history), rewritten atomically every epoch;
  model.pt      the self-describing trained model (kind "trained_model"), read by `load_trained_model`;
  metrics.json  final metrics and the per-epoch history;  tensorboard/  TensorBoard events.
Rerunning the same command resumes from last.pt. Every epoch reseeds all generators from (seed, epoch), so a
resumed run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, StepLR
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.data import DataError, DatasetBundle
from deepiot.errors import DeepIoTError
from deepiot.models import build_model
from deepiot.runtime import DEVICE_CHOICES, evaluate_loader, hyperparameter_table, resolve_device
from deepiot.utils import (
    DIVERGED_LOSS,
    ConfigError,
    atomic_write,
    check_call_types,
    config_to_dataclass,
    derive_seed,
    describe_differences,
    flatten,
    remove_stale_temporaries,
    seed_everything,
)

log = logging.getLogger(__name__)


class TrainingError(DeepIoTError, RuntimeError):
    """Training cannot go on (the loss became NaN/inf or exploded); the message says what to change."""


# Config groups that decide what a training run computes (compared before resuming or reusing a model).
RESULT_GROUPS = ("seed", "data", "model", "trainer")
# Keys inside those groups that change only how a run is shown or how fast it goes. trainer.progress_bar and
# trainer.num_threads are the root keys progress_bar and num_threads now (outside RESULT_GROUPS); the saved configs
# of originals trained before the move still carry them, and must still match.
NON_RESULT_KEYS = (
    "trainer.resume",
    "trainer.progress_bar",
    "trainer.log_every",
    "trainer.num_threads",
    "trainer.device",  # an original trained on a GPU serves compression on any device
    "data.num_workers",
)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# (setting, test, what is expected): the ranges of TrainerConfig's settings.
TRAINER_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", lambda v: _is_int(v, 1), "an integer >= 1"),
    ("optimizer", lambda v: v in ("adam", "sgd"), "one of: adam, sgd"),
    ("lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("momentum", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("lr_schedule", lambda v: v in ("constant", "cosine", "step"), "one of: constant, cosine, step"),
    ("lr_step_epochs", lambda v: _is_int(v, 1), "an integer >= 1"),
    ("lr_gamma", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("gradient_clip_norm", lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    ("eval_batch_size", lambda v: _is_int(v, 1), "an integer >= 1"),
    ("limit_batches", lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
    ("resume", lambda v: isinstance(v, bool), "true or false"),
    ("log_every", lambda v: _is_int(v, 1), "an integer >= 1"),
)


# (dotted key, test, what is expected), checked in this order before any data is loaded: each message names the
# range; then `TrainerConfig` refuses unknown trainer keys.
CONFIG_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", lambda v: _is_int(v, 0), "an integer >= 0"),
    ("num_threads", lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
    ("progress_bar", lambda v: v in (True, False, "auto"), "true, false or auto"),
    ("data.batch_size", lambda v: _is_int(v, 1), "an integer >= 1"),
    ("data.num_workers", lambda v: _is_int(v, 0), "an integer >= 0"),
    *((f"trainer.{name}", is_valid, expected) for name, is_valid, expected in TRAINER_CHECKS),
)


@dataclass(frozen=True)
class TrainerConfig:
    """How deepiot-train trains an original (the `trainer` group, configs/trainer/*.yaml): the schema its
    settings are checked against (unknown keys, types, ranges) before any data is loaded."""

    epochs: int = 4
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # constant | cosine | step
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    gradient_clip_norm: float | None = None
    eval_batch_size: int = 512
    device: str = "auto"
    limit_batches: int | None = None
    resume: bool = True
    log_every: int = 50

    def __post_init__(self) -> None:
        for name, is_valid, expected in TRAINER_CHECKS:
            value = getattr(self, name)
            if not is_valid(value):
                raise ValueError(f"trainer.{name}={value!r} is invalid: expected {expected}.")


@dataclass
class Progress:
    """Where a run stands: epochs finished, seconds spent in them, and one record per finished epoch."""

    epoch: int = 0
    wall_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Loaders:
    """Train/val/test loaders; the train loader shuffles with `shuffle_generator`, reseeded every epoch."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    shuffle_generator: torch.Generator


def train(cfg: DictConfig) -> dict[str, float]:
    """Train `cfg.model` on `cfg.data` with `cfg.trainer` into `cfg.paths.output_dir`; return the final metrics.

    Returns:
        train_loss (last epoch's mean), val_accuracy (last epoch), test_accuracy, epochs, wall_time_s
        (seconds spent in training + validation epochs, summed over resumed sessions) and params.
    """
    check_train_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    output_dir = Path(cfg.paths.output_dir)
    finished = finished_metrics(output_dir / "model.pt", config) if cfg.trainer.resume else None
    if finished is not None:  # a rerun (e.g. of a sweep) skips a finished job
        log.info("%s holds a model trained with this config: skipped", output_dir)
        return finished
    saved_state = read_resume_state(output_dir / "last.pt", config) if cfg.trainer.resume else None
    remove_stale_temporaries(output_dir)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    bundle = load_bundle(cfg)
    model_config = describe_model(cfg, bundle)
    device = resolve_device(cfg.trainer.device)
    model = build_fitting_model(model_config, bundle).to(device)
    loaders = make_loaders(bundle, cfg)
    steps_per_epoch = count_batches(loaders.train, cfg.trainer.limit_batches)
    optimizer = make_optimizer(model, cfg.trainer)
    scheduler = make_scheduler(optimizer, cfg.trainer, steps_per_epoch)
    progress = restore(saved_state, model, optimizer, scheduler) if saved_state else Progress()
    with SummaryWriter(cfg.paths.tensorboard_dir, purge_step=progress.epoch * steps_per_epoch) as writer:
        if progress.epoch == 0:
            writer.add_text("hyperparameters", hyperparameter_table(result_config(config)))
        for epoch in range(progress.epoch, cfg.trainer.epochs):
            progress = run_epoch(model, loaders, optimizer, scheduler, cfg, epoch, progress, writer)
            check_not_diverged(progress, cfg, output_dir / "last.pt")
            save_checkpoint(
                train_state(model, optimizer, scheduler, progress, config), output_dir / "last.pt"
            )
        test_accuracy = evaluate_loader(model, loaders.test, device, cfg.trainer.limit_batches).accuracy
        writer.add_scalar("charts/test_accuracy", test_accuracy, progress.epoch * steps_per_epoch)
    metrics = final_metrics(model, progress, test_accuracy)
    payload = trained_model(model, model_config, bundle, metrics, progress, config)
    save_checkpoint(payload, output_dir / "model.pt")
    record = {"name": cfg.name, "metrics": metrics, "history": progress.history}
    atomic_write(output_dir / "metrics.json", lambda file: file.write(json.dumps(record, indent=2) + "\n"))
    return metrics


def check_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first missing or out-of-range value, before any long work starts."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"config value(s) {', '.join(missing)} must be set (they are '???' in the config). Pass them on the "
            f"command line, e.g. `deepiot-train ... {missing[0]}=<value>`, or in configs/local/default.yaml."
        )
    for key, is_valid, expected in CONFIG_CHECKS:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if not is_valid(value):
            raise ConfigError(
                f"config value {key}={value!r} is invalid: expected {expected}. Fix it in configs/ or override "
                f"it on the command line ({key}=...)."
            )
    config_to_dataclass(TrainerConfig, OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")
    check_device(cfg.trainer.device)
    check_target_types(cfg, "data.dataset")
    check_target_types(cfg, "model")


def check_target_types(cfg: DictConfig, key: str) -> None:
    """The settings under `key` must be parameters of its `_target_` (a loader or model class) of fitting types."""
    node = OmegaConf.select(cfg, key)
    target = OmegaConf.select(cfg, f"{key}._target_")
    try:
        function = get_object(target)
    except Exception as err:  # Hydra raises ImportError, ValueError or others for an unknown name
        raise ConfigError(
            f"config value {key}._target_={target!r} cannot be imported: expected the dotted name of a "
            f"function or class, e.g. deepiot.data.load_mnist or deepiot.models.LeNet5 ({str(err).splitlines()[0]})."
        ) from None
    check_call_types(function, OmegaConf.to_container(node, resolve=True), key)


def build_fitting_model(model_config: dict[str, Any], bundle: DatasetBundle) -> nn.Module:
    """Build the model and run one training sample through it; ConfigError when model and data do not fit."""
    target = model_config.get("_target_")
    sample = bundle.train[:1][0]  # [1, *input_shape]
    try:
        model = build_model(model_config)
        model.eval()
        with torch.no_grad():
            logits = model(sample)
    except (InstantiationException, ValueError, TypeError, RuntimeError, IndexError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        raise ConfigError(
            f"model {target} does not fit dataset {bundle.name!r} (one sample has shape "
            f"{list(bundle.input_shape)}, {bundle.num_classes} classes): {type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}. Expected a model for this input layout: images "
            "[C, H, W] -> model=lenet5, lenet300 or vgg; sensor windows [T, C] -> model=lstm, or model=deepsense "
            "(6 channels: acc xyz + gyro xyz)."
        ) from None
    if tuple(logits.shape) != (1, bundle.num_classes):
        raise ConfigError(
            f"model {target} returns outputs of shape {list(logits.shape)} for one sample of dataset "
            f"{bundle.name!r}; expected logits of shape [1, {bundle.num_classes}] (one per class)."
        )
    return model


def check_not_diverged(progress: Progress, cfg: DictConfig, last_path: Path) -> None:
    """Stop, before this epoch is saved, when its losses exploded; the previous last.pt stays the good state."""
    record = progress.history[-1]
    losses = {"training loss": record["train_loss"], "validation loss": record["val_loss"]}
    for what, loss in losses.items():
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            kept = (
                f"{last_path} (epoch {record['epoch'] - 1}) keeps the last good state"
                if record["epoch"] > 1
                else "no epoch finished before it, so nothing was saved"
            )
            raise TrainingError(
                f"training diverged in epoch {record['epoch']}: the mean {what} is {loss:.3g} (expected a finite "
                f"cross-entropy below {DIVERGED_LOSS:g}; chance level is ln(classes)); validation accuracy "
                f"{record['val_accuracy']:.4f}. This epoch was not saved; {kept}, and no model.pt was written. "
                f"Lower trainer.lr (now {cfg.trainer.lr}) or set trainer.gradient_clip_norm, then rerun with "
                "trainer.resume=false."
            )


def check_device(name: Any) -> None:
    """The device must parse and exist on this machine (`auto` always does)."""
    try:
        resolve_device(name)
    except ValueError as err:
        reason = (
            f"cannot be used here: {err}"
            if _parses_as_device(name)
            else f"is not a torch device: expected e.g. cpu ({DEVICE_CHOICES})."
        )
        raise ConfigError(f"config value trainer.device={name!r} {reason}") from err


def _parses_as_device(name: Any) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides what training computes (see RESULT_GROUPS, NON_RESULT_KEYS)."""
    flat = flatten({group: config.get(group) for group in RESULT_GROUPS})
    return {key: value for key, value in flat.items() if key not in NON_RESULT_KEYS}


def resolve_groups(cfg: DictConfig, groups: tuple[str, ...]) -> dict[str, Any]:
    """Resolve only `groups` of `cfg` to plain values (other keys may refer to a Hydra run that is not active)."""
    nodes = {group: OmegaConf.select(cfg, group) for group in groups}
    return {
        group: OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        for group, node in nodes.items()
    }


def finished_metrics(model_path: Path, config: dict[str, Any]) -> dict[str, float] | None:
    """The metrics of the finished run whose model.pt is `model_path`, if it was trained with this config."""
    if not model_path.is_file():
        return None
    checkpoint = load_checkpoint(model_path, kind="trained_model")
    return checkpoint["metrics"] if result_config(checkpoint["config"]) == result_config(config) else None


def read_resume_state(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The "train_state" in `path` if it exists; ConfigError if it was written with another config."""
    if not path.is_file():
        return None
    state = load_checkpoint(path, kind="train_state")
    saved, current = result_config(state["config"]), result_config(config)
    if saved != current:
        raise ConfigError(
            f"cannot resume from {path}: it was written by a run with another config ({describe_differences(saved, current)}). "
            "Choose another run name (name=...), set trainer.resume=false to start this run over, or delete the folder."
        )
    return state


def restore(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
) -> Progress:
    """Load model/optimizer/scheduler from a "train_state" checkpoint; returns the progress it recorded."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resuming after epoch %d", state["epoch"])
    return Progress(state["epoch"], state["wall_time_s"], state["history"])


def load_bundle(cfg: DictConfig) -> DatasetBundle:
    """Instantiate `cfg.data.dataset` and check that it returned a DatasetBundle with non-empty splits.

    A loader's DataError (missing/corrupt files) is raised as is, not wrapped in Hydra's InstantiationException.
    """
    try:
        bundle = instantiate(cfg.data.dataset)
    except InstantiationException as err:
        if isinstance(err.__cause__, DataError):  # the loader's own message names the file and the fix
            raise err.__cause__ from None
        if isinstance(err.__cause__, ValueError | TypeError):  # a setting the loader refused
            raise ConfigError(
                f"data.dataset ({cfg.data.dataset._target_}) refused its settings: {err.__cause__} Fix the "
                "data.dataset.* values in configs/ or on the command line."
            ) from None
        raise
    if not isinstance(bundle, DatasetBundle):
        raise ConfigError(
            f"data.dataset (_target_ {cfg.data.dataset._target_}) returned a {type(bundle).__name__}; "
            "expected a deepiot.data.DatasetBundle."
        )
    for split in ("train", "val", "test"):
        if len(getattr(bundle, split)) == 0:
            raise ConfigError(
                f"the {split} split of dataset {bundle.name!r} is empty: expected at least one sample. Use more "
                "data, raise data.dataset.limit, or give the split a larger fraction."
            )
    return bundle


def describe_model(cfg: DictConfig, bundle: DatasetBundle) -> dict[str, Any]:
    """The model's self-describing config: the model group plus the dataset's input shape and class count."""
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    shape = [int(size) for size in bundle.input_shape]
    return {**model_config, "input_shape": shape, "num_classes": int(bundle.num_classes)}


def make_loaders(bundle: DatasetBundle, cfg: DictConfig) -> Loaders:
    """Shuffled train loader (own generator) and ordered val/test loaders."""
    shuffle_generator = torch.Generator()
    workers = cfg.data.num_workers
    evaluation = {"batch_size": cfg.trainer.eval_batch_size, "num_workers": workers}
    return Loaders(
        train=DataLoader(
            bundle.train, cfg.data.batch_size, shuffle=True, generator=shuffle_generator, num_workers=workers
        ),
        val=DataLoader(bundle.val, **evaluation),
        test=DataLoader(bundle.test, **evaluation),
        shuffle_generator=shuffle_generator,
    )


def count_batches(loader: DataLoader, limit_batches: int | None) -> int:
    """Batches one pass over `loader` takes, capped by `limit_batches`."""
    return len(loader) if limit_batches is None else min(len(loader), limit_batches)


def make_optimizer(model: nn.Module, trainer: DictConfig) -> torch.optim.Optimizer:
    """Adam or SGD (with momentum) over all model parameters."""
    if trainer.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=trainer.lr, weight_decay=trainer.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=trainer.lr, momentum=trainer.momentum, weight_decay=trainer.weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, trainer: DictConfig, steps_per_epoch: int
) -> LRScheduler:
    """Learning-rate schedule stepped once per batch: constant, cosine to 0 over the run, or step decay."""
    if trainer.lr_schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=trainer.epochs * steps_per_epoch)
    if trainer.lr_schedule == "step":
        return StepLR(optimizer, step_size=trainer.lr_step_epochs * steps_per_epoch, gamma=trainer.lr_gamma)
    return LambdaLR(optimizer, lambda step: 1.0)


def run_epoch(
    model: nn.Module,
    loaders: Loaders,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    cfg: DictConfig,
    epoch: int,
    progress: Progress,
    writer: SummaryWriter,
) -> Progress:
    """Reseed from (seed, epoch), train one epoch, validate, log; returns the progress after this epoch."""
    started = time.perf_counter()
    seed_everything(derive_seed(cfg.seed, epoch))
    loaders.shuffle_generator.manual_seed(derive_seed(cfg.seed, epoch, 1))
    show_bar = show_progress(cfg.progress_bar)
    train_loss = train_one_epoch(
        model, loaders.train, optimizer, scheduler, cfg.trainer, epoch, writer, show_bar
    )
    device = resolve_device(cfg.trainer.device)
    val_accuracy, val_loss, _ = evaluate_loader(model, loaders.val, device, cfg.trainer.limit_batches)
    seconds = time.perf_counter() - started
    record = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "learning_rate": optimizer.param_groups[0]["lr"],
        "seconds": seconds,
    }
    step = (epoch + 1) * count_batches(loaders.train, cfg.trainer.limit_batches)
    writer.add_scalar("losses/val", val_loss, step)
    writer.add_scalar("charts/val_accuracy", val_accuracy, step)
    writer.add_scalar("charts/learning_rate", record["learning_rate"], step)
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f  lr %.2e  %.1f s",
        epoch + 1, cfg.trainer.epochs, train_loss, val_loss, val_accuracy, record["learning_rate"], seconds,
    )  # fmt: skip
    return Progress(epoch + 1, progress.wall_time_s + seconds, [*progress.history, record])


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    trainer: DictConfig,
    epoch: int,
    writer: SummaryWriter,
    progress: bool,
) -> float:
    """One pass over the training batches (with a progress bar when `progress`); logs `losses/train` every
    `log_every` steps; returns the mean loss."""
    model.train()
    device = resolve_device(trainer.device)
    steps = count_batches(loader, trainer.limit_batches)
    epoch_loss, window_loss = 0.0, 0.0
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{trainer.epochs}",
        leave=False,
        disable=not progress,
    )
    for step, (inputs, labels) in enumerate(islice(loader, steps), start=1):
        loss = F.cross_entropy(model(inputs.to(device)), labels.to(device))
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step} (expected a finite "
                "cross-entropy). This epoch was not saved: last.pt keeps the last finished epoch, if any, and no "
                f"model.pt was written. Lower trainer.lr (now {trainer.lr}), set trainer.gradient_clip_norm, or "
                "check the data for NaN/inf values; then rerun with trainer.resume=false."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if trainer.gradient_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), trainer.gradient_clip_norm)
        optimizer.step()
        scheduler.step()
        epoch_loss, window_loss = epoch_loss + loss.item(), window_loss + loss.item()
        if step % trainer.log_every == 0:
            writer.add_scalar("losses/train", window_loss / trainer.log_every, epoch * steps + step)
            window_loss = 0.0
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.update()
    bar.close()
    return epoch_loss / steps


def show_progress(progress_bar: bool | str) -> bool:
    """Progress bars (the root `progress_bar` setting): as configured, or with "auto" only in an interactive
    terminal outside CI."""
    if progress_bar == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(progress_bar)


def train_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    progress: Progress,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The "train_state" checkpoint (last.pt): everything needed to continue after `progress.epoch`."""
    return {
        "kind": "train_state",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": progress.epoch,
        "wall_time_s": progress.wall_time_s,
        "history": progress.history,
        "config": config,
    }


def final_metrics(model: nn.Module, progress: Progress, test_accuracy: float) -> dict[str, float]:
    """The metrics `train` returns, from the last epoch's record and the test evaluation."""
    last = progress.history[-1]
    return {
        "train_loss": last["train_loss"],
        "val_accuracy": last["val_accuracy"],
        "test_accuracy": test_accuracy,
        "epochs": float(progress.epoch),
        "wall_time_s": progress.wall_time_s,
        "params": float(sum(parameter.numel() for parameter in model.parameters())),
    }


def trained_model(
    model: nn.Module,
    model_config: dict[str, Any],
    bundle: DatasetBundle,
    metrics: dict[str, float],
    progress: Progress,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The "trained_model" checkpoint (model.pt): weights plus everything needed to rebuild and feed them."""
    return {
        "kind": "trained_model",
        "model_config": model_config,
        "state_dict": model.state_dict(),
        "metrics": metrics,
        "history": progress.history,
        "epoch": progress.epoch,
        "config": config,
        "data": bundle.describe(),
    }
