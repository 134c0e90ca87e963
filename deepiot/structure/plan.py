"""Slicing plans: the portable record (model config + kept indices) that rebuilds a sliced model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from deepiot.models import build_model
from deepiot.structure.discovery import ExampleInputs
from deepiot.structure.errors import StructureError
from deepiot.structure.graph import KeptIndices, Structure
from deepiot.structure.slicing import slice_model
from deepiot.utils import atomic_write

PLAN_FORMAT = "deepiot-slicing-plan"
PLAN_VERSION = 1


@dataclass
class SlicingPlan:
    """Which hidden elements of which model survive: JSON-portable, checked against a `Structure`.

    Attributes:
        model_config: the checkpoint's model config; `deepiot.models.build_model` rebuilds the original.
        kept: group name → sorted distinct indices of the kept elements (every group listed).
        group_sizes: group name → size in the original model (guards against a different architecture).
    """

    model_config: dict[str, Any]
    kept: dict[str, list[int]]
    group_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_structure(
        cls, structure: Structure, model_config: dict[str, Any], kept: KeptIndices
    ) -> SlicingPlan:
        """A plan for `structure` keeping `kept` (missing groups keep everything)."""
        indices = structure.kept_indices(kept)
        return cls(
            model_config=dict(model_config),
            kept={name: [int(i) for i in value] for name, value in indices.items()},
            group_sizes=structure.group_sizes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model_config": self.model_config,
            "group_sizes": self.group_sizes,
            "kept": self.kept,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SlicingPlan:
        if not isinstance(payload, dict) or payload.get("format") != PLAN_FORMAT:
            raise StructureError(f'not a deepiot slicing plan (expected "format": "{PLAN_FORMAT}").')
        if payload.get("version") != PLAN_VERSION:
            raise StructureError(
                f"slicing plan version {payload.get('version')!r} is not supported (this deepiot reads {PLAN_VERSION})."
            )
        missing = [
            key for key in ("model_config", "group_sizes", "kept") if not isinstance(payload.get(key), dict)
        ]
        if missing:
            raise StructureError(f"slicing plan lacks the object field(s) {missing}.")
        return cls(dict(payload["model_config"]), dict(payload["kept"]), dict(payload["group_sizes"]))

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON atomically (temporary file in the same folder, fsync, rename)."""
        path = Path(path)
        try:
            text = json.dumps(self.to_dict(), indent=2)
        except TypeError as error:
            raise StructureError(
                f"slicing plan is not JSON-serialisable ({error}); use plain dicts/lists."
            ) from error
        atomic_write(path, lambda file: file.write(text))

    @classmethod
    def load(cls, path: str | Path) -> SlicingPlan:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StructureError(f"cannot read slicing plan {path}: {error}") from error
        return cls.from_dict(payload)

    def validate(self, structure: Structure) -> None:
        """Raise StructureError unless the plan fits `structure` group by group."""
        expected = structure.group_sizes
        for what, names in (("group_sizes", self.group_sizes), ("kept", self.kept)):
            unknown, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
            if unknown or missing:
                raise StructureError(
                    f"slicing plan {what} does not match the model's groups: unknown {unknown}, missing {missing} "
                    f"(the model has {list(expected)})."
                )
        for name, size in expected.items():
            if type(self.group_sizes[name]) is not int:
                raise StructureError(
                    f"slicing plan group_sizes[{name!r}] must be an int (the group's size), got "
                    f"{self.group_sizes[name]!r}."
                )
            if self.group_sizes[name] != size:
                raise StructureError(
                    f"slicing plan says group {name!r} has {self.group_sizes[name]} elements, but the model's has "
                    f"{size}; the plan belongs to a model of different widths."
                )
            indices = self.kept[name]
            if not isinstance(indices, list) or not all(type(i) is int for i in indices):
                raise StructureError(f"slicing plan kept[{name!r}] must be a list of ints, got {indices!r}.")
            structure.kept_indices({name: indices})


def build_sliced_model(
    plan: SlicingPlan, state_dict: dict[str, Tensor], example_inputs: ExampleInputs
) -> nn.Module:
    """Rebuild the sliced model of `plan` in eval mode.

    `state_dict` is either the full model's (e.g. the fine-tuned critic: it is sliced) or the sliced
    model's own (e.g. after fine-tuning the small model: it is loaded into the rebuilt architecture).
    """
    model = rebuild_original(plan.model_config)
    structure = Structure.from_model(model, example_inputs)
    plan.validate(structure)
    if _fits(model, state_dict):
        model.load_state_dict(state_dict)
        return slice_model(model.eval(), structure, plan.kept).eval()
    sliced = slice_model(model.eval(), structure, plan.kept)
    if _fits(sliced, state_dict):
        sliced.load_state_dict(state_dict)
        return sliced.eval()
    raise StructureError(
        "state_dict fits neither the full model of the plan's model_config nor the sliced model (first "
        f"difference from the full model: {_first_mismatch(model, state_dict)}); pass the full trained "
        "model's or the sliced model's state_dict."
    )


def rebuild_original(model_config: dict[str, Any]) -> nn.Module:
    """The original (unsliced) model of a plan's `model_config`, or a StructureError saying what is missing."""
    remedy = (
        "A plan rebuilds the model from model_config = {'_target_': '<package.module.Class>', <constructor "
        "keyword arguments>, 'input_shape': [...]} (input_shape is passed only if the constructor takes it). "
        "deepiot.compress(...) stores '_target_' and input_shape by itself when the class is importable and "
        "constructible without arguments; otherwise pass outputs=OutputOptions(model_config={...}), or build "
        "the model yourself and call slice_model(model, Structure.from_model(model, x), plan.kept)."
    )
    if "_target_" not in model_config:
        raise StructureError(
            f"the slicing plan cannot rebuild its model: model_config has no '_target_' "
            f"(keys: {sorted(model_config)}). {remedy}"
        )
    if not isinstance(model_config["_target_"], str):
        raise StructureError(
            f"the slicing plan cannot rebuild its model: model_config['_target_'] must be a string import "
            f"path, got {model_config['_target_']!r}. {remedy}"
        )
    try:
        model = build_model(model_config)
    except Exception as error:  # ImportError, hydra's InstantiationException wrapping the constructor's error
        raise StructureError(
            f"the slicing plan cannot rebuild its model {model_config['_target_']!r} from model_config "
            f"{model_config}: {type(error).__name__}: {' '.join(str(error).split())[:400]}. {remedy}"
        ) from error
    if not isinstance(model, nn.Module):
        raise StructureError(
            f"the slicing plan's model_config['_target_'] = {model_config['_target_']!r} built a "
            f"{type(model).__name__}, not an nn.Module. {remedy}"
        )
    return model


def _fits(model: nn.Module, state_dict: dict[str, Tensor]) -> bool:
    own = model.state_dict()
    return own.keys() == state_dict.keys() and all(own[k].shape == state_dict[k].shape for k in own)


def _first_mismatch(model: nn.Module, state_dict: dict[str, Tensor]) -> str:
    own = model.state_dict()
    for key in sorted(set(own) | set(state_dict)):
        if key not in own or key not in state_dict or own[key].shape != state_dict[key].shape:
            mine = tuple(own[key].shape) if key in own else "absent"
            theirs = tuple(state_dict[key].shape) if key in state_dict else "absent"
            return f"'{key}': model {mine} vs given {theirs}"
    return "none"
