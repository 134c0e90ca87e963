"""What training an original, compressing it and fine-tuning share: device, batches, evaluation, dataset tensors.

`resolve_device` turns the one `device` setting (auto | cpu | cuda | cuda:N | mps) into a torch.device once;
`BatchStream` gives endless seeded mini-batches whose whole state is saved (so a resumed run sees the same
batches); `evaluate`/`accuracy` validate a model (or a masked network) in eval mode; `dataset_tensors` turns
any (input, label) dataset into two tensors; `CompressionError` is the error of a run that cannot go on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from deepiot.errors import DeepIoTError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N | mps"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch.device a `device` setting names: "auto" (or None) picks CUDA, then MPS, then the CPU.

    "cuda" becomes "cuda:<current index>", so two settings naming the same device compare equal. ValueError
    names the setting and what is available when the device does not parse or does not exist here.
    """
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name!r} is not a torch device: expected {DEVICE_CHOICES}.") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index if device.index is not None else (torch.cuda.current_device() if count else 0)
        if index >= count:
            raise ValueError(
                f"device={name!r} asks for CUDA device {index}, but {count} CUDA device(s) are available "
                "here; use device=auto or device=cpu."
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device={name!r} asks for Apple MPS, which is not available here; use device=auto.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not supported: expected {DEVICE_CHOICES}.")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s first parameter or buffer (the CPU for a model with neither, or a non-module,
    which the input checks then refuse with their own message)."""
    if not isinstance(model, nn.Module):
        return torch.device("cpu")
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class CompressionError(DeepIoTError, RuntimeError):
    """The loop cannot continue (e.g. a loss became NaN); the message says what happened and what to do."""


class BatchStream:
    """Endless shuffled mini-batches of a tensor dataset (epochs without replacement, last partial batch dropped).

    Its whole state (permutation, position, generator) is saved, so a resumed run sees the same batches. The
    permutation is drawn on the CPU, so the batch order is the same on every device; the indices handed out
    are on the inputs' device.
    """

    def __init__(self, inputs: Tensor, labels: Tensor, batch_size: int, seed: int) -> None:
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(labels), generator=self.generator)
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        indices = self.next_indices()
        return self.inputs[indices], self.labels[indices]

    def next_indices(self) -> Tensor:
        """The sample indices of the next batch [batch_size] (to index tensors that go with the dataset)."""
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.labels), generator=self.generator)
            self.position = 0
        indices = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return indices.to(self.inputs.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], int(state["position"])


class Evaluation(NamedTuple):
    """What an evaluation measured, read by name: top-1 accuracy, mean cross-entropy, and (on tensors) the
    per-sample cross-entropy [N]."""

    accuracy: float
    loss: float
    losses: Tensor | None = None


@torch.no_grad()
def evaluate(
    network: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    batch_size: int,
    masks: Mapping[str, Tensor] | None = None,
) -> Evaluation:
    """Accuracy and cross-entropy (mean and per sample) in eval mode; `masks` go to a MaskedNetwork."""
    network.eval()
    losses, correct = [], 0
    for start in range(0, len(labels), batch_size):
        batch, targets = inputs[start : start + batch_size], labels[start : start + batch_size]
        logits = network(batch) if masks is None else network(batch, masks)  # [B, classes]
        losses.append(F.cross_entropy(logits, targets, reduction="none"))
        correct += int((logits.argmax(dim=1) == targets).sum())
    per_sample = torch.cat(losses)  # [N]
    return Evaluation(correct / len(labels), float(per_sample.mean()), per_sample)


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    max_batches: int | None = None,
) -> Evaluation:
    """`evaluate` over the batches of a DataLoader (at most `max_batches`), for data that is not held in memory."""
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for inputs, labels in islice(loader, max_batches):
        logits = model(inputs.to(device))  # [B, classes]
        labels = labels.to(device)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    return Evaluation(correct / count, loss_sum / count)


def accuracy(
    network: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    batch_size: int,
    masks: Mapping[str, Tensor] | None = None,
) -> float:
    """Top-1 accuracy in eval mode (see `evaluate`)."""
    return evaluate(network, inputs, labels, batch_size, masks).accuracy


def dataset_tensors(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    """(inputs, labels) of a TensorDataset, or of any (input, label) dataset by stacking its items."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        inputs, labels = tensors
    else:
        items = [dataset[index] for index in range(len(dataset))]  # type: ignore[arg-type]
        if not items:
            raise ValueError(f"the {split} dataset is empty; compression needs train, val and test samples.")
        inputs = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = torch.as_tensor([int(item[1]) for item in items])
    if len(labels) == 0:
        raise ValueError(f"the {split} dataset is empty; compression needs train, val and test samples.")
    return inputs.float(), labels.long()


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: Tensor, batch_size: int) -> Tensor:
    """The model's outputs for every input, in eval mode and in batches: [N, classes]."""
    model.eval()
    return torch.cat(
        [model(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
    )


def hyperparameter_table(settings: Mapping[str, Any]) -> str:
    """Markdown table of every setting ({"critic.lr": 1e-4, ...}), logged once to TensorBoard (CleanRL style)."""
    rows = [f"|{key}|{value}|" for key, value in settings.items()]
    return "|setting|value|\n|-|-|\n" + "\n".join(rows)


def check_reinitialisable(model: nn.Module) -> None:
    """ValueError when a parameter of `model` belongs to a module without `reset_parameters` (training from
    scratch would keep its trained values); called before long work that ends in `reinitialised`."""
    modules = dict(model.named_modules())
    stale = [
        name
        for name, _ in model.named_parameters()
        if not callable(getattr(modules[name.rpartition(".")[0]], "reset_parameters", None))
    ]
    if stale:
        raise ValueError(
            f"training from scratch re-initialises modules through reset_parameters(), but the parameters {stale} "
            "belong to modules without one; give those modules a reset_parameters() method."
        )


def reinitialised(model: nn.Module, seed: int) -> tuple[nn.Module, list[str]]:
    """(a copy of `model` with `reset_parameters()` re-run on every module that has it, under
    `torch.manual_seed(seed)` — the global generator is restored afterwards —, the names of those modules).

    ValueError when a parameter belongs to a module without `reset_parameters` (it would keep trained values).
    """
    check_reinitialisable(model)
    fresh = copy.deepcopy(model)
    modules = dict(fresh.named_modules())
    names = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in modules.items():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                names.append(name)
    return fresh, names
