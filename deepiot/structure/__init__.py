"""The structure layer: hidden-element groups, masked execution, physical slicing and slicing plans.

Typical use: `structure = Structure.from_model(model, example_inputs)` finds the groups (forward order);
`MaskedNetwork(model, structure)(x, sample_masks(keep_probs, batch_size))` runs the critic under DeepIoT
dropout masks; `structure.cost(kept_counts)` prices a structure without slicing; `slice_model(model,
structure, kept)` returns the physically smaller dense model; `SlicingPlan` records it portably.
"""

from __future__ import annotations

from deepiot.cost.types import Cost
from deepiot.structure.errors import StructureError
from deepiot.structure.graph import Group, Structure
from deepiot.structure.masking import MaskedNetwork, sample_masks
from deepiot.structure.plan import SlicingPlan, build_sliced_model
from deepiot.structure.slicing import check_equivalent, slice_model

__all__ = [
    "Cost",
    "Group",
    "MaskedNetwork",
    "SlicingPlan",
    "Structure",
    "StructureError",
    "build_sliced_model",
    "check_equivalent",
    "sample_masks",
    "slice_model",
]
