"""Save and resume a compression: the whole loop as one "compression_state" checkpoint, refused when the
settings differ or when it was written on another device type (random streams differ per device)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepiot.checkpoint import load_checkpoint
from deepiot.compression.config import CompressionConfig
from deepiot.compression.step import LoopParts, LoopState
from deepiot.utils import ConfigError, describe_differences

STATE_FILE = "compress_state.pt"
FINETUNE_STATE_FILE = "finetune_state.pt"
MAGNITUDE_STATE_FILE = "magnitude_finetune_state.pt"  # compare_magnitude's fine-tuning
SCRATCH_STATE_FILE = "scratch_finetune_state.pt"  # try_scratch's training of the re-initialised model


def state_payload(parts: LoopParts, state: LoopState) -> dict[str, Any]:
    """The whole loop as a "compression_state" checkpoint (tensors and plain containers only)."""
    return {
        "kind": "compression_state",
        "config": parts.config.to_dict(),
        "state_dict": parts.critic.state_dict(),
        "compressor": parts.compressor.state_dict(),
        "critic_optimizer": parts.critic_optimizer.state_dict(),
        "compressor_optimizer": parts.compressor_optimizer.state_dict(),
        "baselines": {name: baseline.state_dict() for name, baseline in parts.baselines.items()},
        "budget": parts.budget.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "batches": parts.batches.state_dict(),
        "mask_generator": parts.mask_generator.get_state(),
        "device": parts.device.type,  # the mask stream's generator state fits only this device type
        "loop": asdict(state),
        "metrics": {key: float(value) for key, value in (state.history[-1] if state.history else {}).items()},
    }


def read_saved_state(path: Path, config: CompressionConfig) -> dict[str, Any] | None:
    """The saved loop state at `path`, if any; ConfigError when it was written with another config."""
    if not path.is_file():
        return None
    saved = load_checkpoint(path, kind="compression_state")
    if saved["config"] != config.to_dict():
        raise ConfigError(
            f"cannot resume from {path}: it was written with another compression config "
            f"({describe_differences(saved['config'], config.to_dict())}). Expected the same settings as the run "
            "that wrote it: use another output folder (name=... or hydra.run.dir=...) or delete that folder."
        )
    return saved


def restore(parts: LoopParts, saved: Mapping[str, Any]) -> LoopState:
    """Load every part's state from a checkpoint; returns the loop state it recorded."""
    saved_device = saved.get("device", "cpu")
    if saved_device != parts.device.type:
        raise ConfigError(
            f"cannot resume on {parts.device}: this compression state was written on a {saved_device} device "
            "(random streams differ per device). Resume it with device=" + saved_device + ", or use another "
            "output folder."
        )
    parts.critic.load_state_dict(saved["state_dict"])
    parts.compressor.load_state_dict(saved["compressor"])
    parts.critic_optimizer.load_state_dict(saved["critic_optimizer"])
    parts.compressor_optimizer.load_state_dict(saved["compressor_optimizer"])
    for name, baseline in parts.baselines.items():
        baseline.load_state_dict(saved["baselines"][name])
    parts.budget.load_state_dict(saved["budget"])
    parts.schedule.load_state_dict(saved["schedule"])
    parts.batches.load_state_dict(saved["batches"])
    parts.mask_generator.set_state(saved["mask_generator"])
    state = LoopState(**saved["loop"])
    state.keep_logits = {name: logits.to(parts.device) for name, logits in state.keep_logits.items()}
    return state
