"""Self-describing checkpoints: atomic saves, safe (`weights_only`) loads and clear errors.

A deepiot checkpoint is a dict saved with `torch.save`, holding only tensors and plain containers:
  "format": "deepiot", "version": 1, "kind" ("trained_model" | "train_state" | "compression_state" | ...),
  "model_config" (`_target_`, widths, "input_shape", "num_classes"; `deepiot.models.build_model` rebuilds it),
  "state_dict", "metrics" (floats), "config" (resolved Hydra config as a plain dict),
  "data" (name, input_shape, num_classes, class_names, normalization, channel_axis), plus resume state.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepiot.errors import DeepIoTError
from deepiot.utils import atomic_write

FORMAT = "deepiot"
VERSION = 1
# Every file torch.save writes (zip serialization) starts with a zip local-file header.
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(DeepIoTError, ValueError):
    """A checkpoint file is missing, truncated, not a deepiot checkpoint, or of the wrong kind."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Save `payload` atomically: write a temporary file in the same folder, fsync it, then rename it.

    A crash mid-save leaves the previous file intact, never a half-written one. "format" and "version" are
    filled in; "kind" is required so every file says what it is.
    """
    if "kind" not in payload:
        raise CheckpointError(
            f"checkpoint payload for {path} has no 'kind' key. Expected e.g. 'trained_model' or "
            "'compression_state' so that a loader can tell what the file holds."
        )
    document = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda file: torch.save(document, file), binary=True)


def load_checkpoint(
    path: str | os.PathLike[str], kind: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a deepiot checkpoint with `torch.load(weights_only=True)` (no arbitrary code runs).

    Args:
        path: the `.pt` file.
        kind: if given, the checkpoint's "kind" must equal it.
        map_location: where its tensors go (default the CPU, so a file written on any device loads anywhere).

    Raises:
        CheckpointError: the file is missing, truncated, not a deepiot checkpoint, newer than this
            version of deepiot, or of another kind.
    """
    path = Path(path)
    _check_is_complete_torch_file(path)
    try:
        document = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain containers (for example a "
            "whole pickled nn.Module), so it is refused for safety. A deepiot checkpoint is a dict of tensors, "
            "numbers, strings, lists and dicts written by deepiot.checkpoint.save_checkpoint."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} could not be read: it is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Re-create it (rerun the command that wrote it)."
        ) from err
    _check_is_deepiot_document(path, document)
    _check_finite_weights(path, document)
    if kind is not None and document.get("kind") != kind:
        raise CheckpointError(
            f"checkpoint {path} is a {document.get('kind')!r} checkpoint, but a {kind!r} checkpoint was expected. "
            "Pass the file that the matching step wrote (a trained original is <run dir>/model.pt)."
        )
    return document


def load_trained_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its "trained_model" checkpoint (written on any device) on `device`;
    returns (model in eval mode, checkpoint)."""
    from deepiot.models import build_model  # deferred: models import Hydra, checkpoints need only torch

    checkpoint = load_checkpoint(path, kind="trained_model", map_location=device)
    model = build_model(checkpoint["model_config"]).to(device)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path}: its state_dict does not fit the model its model_config describes "
            f"({checkpoint['model_config'].get('_target_')}). The file was edited or written by another "
            f"version. Details: {str(err).splitlines()[0]}"
        ) from err
    return model.eval(), checkpoint


def _check_is_complete_torch_file(path: Path) -> None:
    """Fail early and clearly for a missing file, a half-written zip archive or a file of another type."""
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file {path} does not exist. Expected a .pt file written by deepiot "
            "(e.g. outputs/train/<name>/model.pt from deepiot-train)."
        )
    with path.open("rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        raise CheckpointError(
            f"file {path} is not a PyTorch checkpoint (it does not start with the zip header torch.save "
            "writes). Expected a .pt file written by deepiot.checkpoint.save_checkpoint."
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: it starts like a torch.save archive but its end is "
            "missing (e.g. the disk filled up or the copy was interrupted). Re-create it (rerun the command "
            "that wrote it)."
        )


def _check_is_deepiot_document(path: Path, document: Any) -> None:
    """The loaded object must be a dict tagged "format": "deepiot" with a version this code understands."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = (
            f"a dict with keys {sorted(map(str, document))[:8]}"
            if isinstance(document, dict)
            else type(document)
        )
        raise CheckpointError(
            f"file {path} is a PyTorch file but not a deepiot checkpoint: it holds {found} without "
            "'format': 'deepiot'. A plain state_dict cannot be used directly: it does not say which architecture "
            "or data it belongs to. Train with deepiot-train, or wrap it with save_checkpoint "
            "(kind 'trained_model', model_config, data, state_dict)."
        )
    if not isinstance(document.get("version"), int) or document["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {document.get('version')!r}; this deepiot reads versions "
            f"up to {VERSION}. Upgrade deepiot to read it."
        )


def _check_finite_weights(path: Path, document: dict[str, Any]) -> None:
    """Refuse weights holding NaN/inf (e.g. saved by a diverged run): nothing useful can be computed from them."""
    state_dict = document.get("state_dict")
    if not isinstance(state_dict, dict):
        return
    bad = [
        name
        for name, tensor in state_dict.items()
        if isinstance(tensor, torch.Tensor)
        and tensor.is_floating_point()
        and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint {path} holds NaN or infinite weights in {shown}: it was saved by a run that diverged. "
            "Expected finite weights. Retrain it with a lower learning rate (trainer.lr) and trainer.resume=false."
        )
