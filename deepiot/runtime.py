"""What training an original, compressing it and fine-tuning share: batches, evaluation, dataset tensors.

`BatchStream` gives endless seeded mini-batches whose whole state is saved (so a resumed run sees the same
batches); `evaluate`/`accuracy` validate a model (or a masked network) in eval mode; `dataset_tensors` turns
any (input, label) dataset into two tensors; `CompressionError` is the error of a run that cannot go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset


class CompressionError(RuntimeError):
    """The loop cannot continue (e.g. a loss became NaN); the message says what happened and what to do."""


class BatchStream:
    """Endless shuffled mini-batches of a tensor dataset (epochs without replacement, last partial batch dropped).

    Its whole state (permutation, position, generator) is saved, so a resumed run sees the same batches.
    """

    def __init__(self, inputs: Tensor, labels: Tensor, batch_size: int, seed: int) -> None:
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(labels), generator=self.generator)
        self.position = 0

    def next(self) -> tuple[Tensor, Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.labels), generator=self.generator)
            self.position = 0
        indices = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.inputs[indices], self.labels[indices]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], int(state["position"])


@torch.no_grad()
def evaluate(
    network: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    batch_size: int,
    masks: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, float]:
    """(per-sample cross-entropy [N], top-1 accuracy) in eval mode; `masks` go to a MaskedNetwork."""
    network.eval()
    losses, correct = [], 0
    for start in range(0, len(labels), batch_size):
        batch, targets = inputs[start : start + batch_size], labels[start : start + batch_size]
        logits = network(batch) if masks is None else network(batch, masks)  # [B, classes]
        losses.append(F.cross_entropy(logits, targets, reduction="none"))
        correct += int((logits.argmax(dim=1) == targets).sum())
    return torch.cat(losses), correct / len(labels)


def accuracy(
    network: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    batch_size: int,
    masks: Mapping[str, Tensor] | None = None,
) -> float:
    """Top-1 accuracy in eval mode (see `evaluate`)."""
    return evaluate(network, inputs, labels, batch_size, masks)[1]


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
