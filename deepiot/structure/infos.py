"""What discovery knows about each graph value: its real shape and which dimension the groups index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from deepiot.structure.layout import Layout


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one tensor seen while running the traced model on the example inputs."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    element_size: int

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass(frozen=True)
class TensorInfo:
    """A tensor whose dimension `channel_dim` is indexed by hidden-element groups along `layout`.

    `clean` marks values computed from RNN outputs by zero-preserving ops only: an RNN unit masked to 0
    inside the recurrence is exactly 0 here, so no further mask is needed. `cell` marks an LSTM cell state,
    which the recurrence never masks.
    """

    channel_dim: int
    layout: Layout
    clean: bool = False
    cell: bool = False


@dataclass(frozen=True)
class TupleInfo:
    """A tuple value (module/op with several outputs); `items[i]` describes element i."""

    items: tuple[Info, ...]


@dataclass(frozen=True)
class StackedInfo:
    """An RNN final state [L·D, N, H]: `items[i]` describes state[i] ([N, H], channel dim 1).

    `source` is the RNN call node, so slicing can re-index the per-layer state of a `StackedRNN`.
    """

    items: tuple[TensorInfo | None, ...]
    source: str
    directions: int


Info = TensorInfo | TupleInfo | StackedInfo | None


def info_groups(info: Info) -> list[str]:
    """Producer ids referenced anywhere inside `info`, in order, without repeats."""
    found: list[str] = []
    if isinstance(info, TensorInfo):
        found = [s.group for s in info.layout if s.group is not None]
    elif isinstance(info, TupleInfo | StackedInfo):
        for item in info.items:
            found += info_groups(item)
    return list(dict.fromkeys(found))


def tensor_info(
    channel_dim: int, layout: Layout, clean: bool = False, cell: bool = False
) -> TensorInfo | None:
    """A `TensorInfo`, or None when no segment of `layout` belongs to a group (nothing to follow)."""
    if all(segment.group is None for segment in layout):
        return None
    return TensorInfo(channel_dim, layout, clean, cell)


def to_meta(value: Any) -> Any:
    """Replace every tensor inside a (nested tuple/list) value by its `TensorMeta`."""
    if isinstance(value, Tensor):
        return TensorMeta(tuple(value.shape), value.dtype, value.element_size())
    if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
        return tuple(to_meta(item) for item in value)
    return value
