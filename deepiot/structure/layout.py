"""Channel layouts: which hidden-element group indexes each position of a tensor's channel dimension.

A layout is a tuple of `Segment`s laid end to end along one tensor dimension. Segment (g, count, repeat)
covers `count * repeat` positions: element k of group g occupies positions k*repeat … k*repeat+repeat-1
(channel-major, as after `flatten` of [N, C, H, W] → repeat = H*W). `group=None` marks positions owned by
no compressible group (model inputs, the logit layer, pinned producers): they are always kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """`count` consecutive elements of `group` (None: not compressible), each repeated `repeat` times."""

    group: str | None
    count: int
    repeat: int = 1

    @property
    def width(self) -> int:
        """Number of tensor positions this segment covers."""
        return self.count * self.repeat


Layout = tuple[Segment, ...]
CountValue = int | Tensor


def layout_width(layout: Layout) -> int:
    """Full size of the dimension described by `layout`."""
    return sum(segment.width for segment in layout)


def kept_width(layout: Layout, counts: Mapping[str, CountValue]) -> CountValue:
    """Size of the dimension after slicing when group g keeps `counts[g]` elements (missing: all)."""
    total: CountValue = 0
    for segment in layout:
        count = counts.get(segment.group, segment.count) if segment.group is not None else segment.count
        total = total + count * segment.repeat
    return total


def kept_positions(layout: Layout, kept: Mapping[str, Tensor]) -> Tensor:
    """Sorted positions of the dimension that survive when group g keeps indices `kept[g]` (missing: all).

    Index sets are built on the CPU; their users move them to the tensors they index.
    """
    parts, offset = [], 0
    for segment in layout:
        indices = kept.get(segment.group) if segment.group is not None else None
        if indices is None:
            parts.append(torch.arange(offset, offset + segment.width))
        else:
            within = torch.arange(segment.repeat)
            # [k, 1] * repeat + [1, repeat] → [k, repeat] → [k * repeat], channel-major
            parts.append((offset + indices[:, None] * segment.repeat + within[None, :]).reshape(-1))
        offset += segment.width
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def tile(layout: Layout, times: int) -> Layout:
    """Layout of `times` consecutive copies (an outer dimension flattened in front of the channels)."""
    return layout * times


def spread(layout: Layout, inner: int) -> Layout:
    """Layout after flattening `inner` trailing positions into every channel."""
    return tuple(Segment(s.group, s.count, s.repeat * inner) for s in layout)


def unspread(layout: Layout, inner: int) -> Layout | None:
    """Inverse of `spread`, or None when some channel does not cover whole blocks of `inner` positions."""
    if any(s.repeat % inner for s in layout):
        return None
    return tuple(Segment(s.group, s.count, s.repeat // inner) for s in layout)


def untile(layout: Layout, times: int) -> Layout | None:
    """Inverse of `tile`, or None when `layout` is not `times` copies of one layout."""
    if len(layout) % times:
        return None
    period = layout[: len(layout) // times]
    return period if period * times == layout else None


def rename(layout: Layout, names: Mapping[str, str | None]) -> Layout:
    """Replace segment groups through `names` (producer id → final group name, None when pinned)."""
    return tuple(Segment(names[s.group] if s.group is not None else None, s.count, s.repeat) for s in layout)
