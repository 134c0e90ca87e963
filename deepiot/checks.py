"""Up-front checks of a user's model and data, run before any long work (compression, pre-training, export).

A model deepiot can compress is a classifier: called on a batch [N, *input_shape] it returns logits
[N, classes] with at least two classes, and every label is an integer class index below `classes`. These
checks run the model once on two samples, so a regression model, a sequence-to-sequence model, inputs of
the wrong shape or labels out of range are refused with a message naming what is wrong and what was
expected — instead of an error from deep inside PyTorch after the run folder was created.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from deepiot.errors import DeepIoTError


class ModelCheckError(DeepIoTError, ValueError):
    """A model or dataset that deepiot cannot compress; the message says what was found and expected."""


def check_classifier(model: object, inputs: Tensor, what: str = "the training inputs") -> int:
    """Run `model` on the first two of `inputs`; return its number of classes or raise ModelCheckError.

    The model runs in eval mode without gradients (its training flags are restored).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"deepiot needs the model as an nn.Module (a classifier), got {type(model).__name__}."
        )
    name = type(model).__name__
    batch = inputs[:2]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            output = model(batch)
    except Exception as error:  # the model's own error: a shape or dtype it does not take
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ModelCheckError(
            f"{name} fails on {what} of shape {tuple(batch.shape)} and dtype {batch.dtype} "
            f"({type(error).__name__}: {first_line}); the data must have the input shape the model takes, "
            "batch first (deepiot feeds inputs as float32)."
        ) from error
    finally:
        for module, training in modes.items():
            module.training = training
    if not (isinstance(output, Tensor) and output.dim() == 2 and output.shape[0] == len(batch)):
        raise ModelCheckError(
            f"{name} is not a classifier deepiot can compress: on a batch of {len(batch)} it returned "
            f"{_describe(output)}, but logits of shape [{len(batch)}, classes] were expected."
        )
    if output.shape[1] < 2:
        raise ModelCheckError(
            f"{name} returns {output.shape[1]} logit per sample; a classifier needs at least 2 classes "
            "(a regression or binary single-logit model is not supported)."
        )
    return int(output.shape[1])


def check_labelled_data(
    split: str, inputs: Tensor, labels: Tensor, classes: int, sample_shape: tuple
) -> None:
    """Finite inputs of the expected per-sample shape, and integer labels in [0, classes)."""
    if tuple(inputs.shape[1:]) != tuple(sample_shape):
        raise ModelCheckError(
            f"the {split} inputs have per-sample shape {tuple(inputs.shape[1:])}, but the training inputs "
            f"have {tuple(sample_shape)}; every split must have the same input shape."
        )
    if len(labels) != len(inputs):
        raise ModelCheckError(f"the {split} set has {len(inputs)} inputs but {len(labels)} labels.")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        first = int((~torch.isfinite(inputs.flatten(1))).any(dim=1).nonzero()[0])
        raise ModelCheckError(f"the {split} inputs contain NaN or inf values (first at sample {first}).")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ModelCheckError(
            f"the {split} labels must be integer class indices, got non-integer values such as "
            f"{float(labels[labels != labels.round()][0])}."
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ModelCheckError(
            f"the {split} labels range over [{low}, {high}], but the model returns {classes} logits, so "
            f"labels must lie in [0, {classes - 1}]."
        )


def _describe(output: object) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {list(output.shape)}"
    if isinstance(output, tuple | list):
        return f"a {type(output).__name__} of {len(output)} items"
    if isinstance(output, Mapping):
        return f"a mapping with keys {list(output)[:5]}"
    return f"a {type(output).__name__}"
