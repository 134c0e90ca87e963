"""Structure cost: params, MACs, activation and model bytes as polynomials in the kept counts.

Discovery records, from the real shapes of one traced forward pass, every quantity of the contract as a
sum of `Term`s: a constant times a product of dimension sizes, each size a `LinearForm` of the kept
counts (e.g. Linear MACs = positions · in_kept · out_kept). Evaluating them needs no slicing and works
elementwise on Tensors [N] of kept counts, so a batch of sampled structures is costed in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from deepiot.cost.types import Cost
from deepiot.structure.layout import CountValue, Layout


@dataclass(frozen=True)
class LinearForm:
    """The size of one dimension: constant + Σ multiplier · kept_count[group]."""

    constant: int
    coefficients: tuple[tuple[str, int], ...]

    @classmethod
    def from_layout(cls, layout: Layout) -> LinearForm:
        constant, multipliers = 0, {}
        for segment in layout:
            if segment.group is None:
                constant += segment.width
            else:
                multipliers[segment.group] = multipliers.get(segment.group, 0) + segment.repeat
        return cls(constant, tuple(multipliers.items()))

    def value(self, counts: Mapping[str, CountValue]) -> CountValue:
        total: CountValue = self.constant
        for group, multiplier in self.coefficients:
            total = total + multiplier * counts[group]
        return total


@dataclass(frozen=True)
class Term:
    """coefficient · Π form sizes."""

    coefficient: int
    forms: tuple[LinearForm, ...] = ()

    @classmethod
    def of(cls, coefficient: int, layouts: Sequence[Layout] = ()) -> Term:
        return cls(coefficient, tuple(LinearForm.from_layout(layout) for layout in layouts))

    def value(self, sizes: Mapping[LinearForm, CountValue]) -> CountValue:
        """The term's value given every form's size (`sizes`, see `form_sizes`)."""
        total: CountValue = self.coefficient
        for form in self.forms:
            total = total * sizes[form]
        return total


def combine(terms: Sequence[Term]) -> tuple[Term, ...]:
    """Merge terms with the same product of forms (e.g. BN weight, bias, running mean and var)."""
    merged: dict[tuple[LinearForm, ...], int] = {}
    for term in terms:
        key = tuple(sorted(term.forms, key=repr))
        merged[key] = merged.get(key, 0) + term.coefficient
    return tuple(Term(coefficient, forms) for forms, coefficient in merged.items())


def terms_value(terms: Sequence[Term], sizes: Mapping[LinearForm, CountValue]) -> CountValue:
    """Σ of the terms' values (an int, or a Tensor when some count is a Tensor)."""
    total: CountValue = 0
    for term in terms:
        total = total + term.value(sizes)
    return total


@dataclass(frozen=True)
class CostModel:
    """Every quantity of the structure cost, as terms recorded at discovery.

    `activations` holds one term list per leaf-module call (input + output bytes at batch 1; one per
    layer of an LSTM/GRU: its input and output sequences and final states, see `deepiot.cost.types.Cost`);
    `unknown_macs` names leaf modules with parameters whose MACs the contract does not define.
    """

    params: tuple[Term, ...]
    model_bytes: tuple[Term, ...]
    macs: tuple[Term, ...]
    activations: tuple[tuple[Term, ...], ...]
    unknown_macs: tuple[str, ...]

    def evaluate(self, counts: Mapping[str, CountValue]) -> Cost:
        """The `Cost` for kept `counts` (every group present: int, or float Tensor [N])."""
        sizes = self.form_sizes(counts)
        call_bytes = [terms_value(call, sizes) for call in self.activations]
        values = [
            terms_value(self.params, sizes),
            terms_value(self.macs, sizes),
            _maximum(call_bytes),
            terms_value(self.model_bytes, sizes),
        ]
        batch = _batch_size(counts)
        if batch is None:
            return Cost(*(int(value) for value in values))
        device = _device(counts)  # constant terms become tensors on the counts' device
        dtype = cost_dtype(device)
        return Cost(
            *(torch.as_tensor(value, dtype=dtype, device=device).expand(batch).float() for value in values)
        )

    @cached_property
    def forms(self) -> tuple[LinearForm, ...]:
        """Every distinct dimension form used by some term."""
        terms = [*self.params, *self.model_bytes, *self.macs, *(t for call in self.activations for t in call)]
        return tuple({form: None for term in terms for form in term.forms})

    def form_sizes(self, counts: Mapping[str, CountValue]) -> dict[LinearForm, CountValue]:
        """Size of every distinct dimension form, computed once per evaluation."""
        return {form: form.value(counts) for form in self.forms}


def _maximum(values: list[CountValue]) -> CountValue:
    """Elementwise maximum of ints and Tensors [N] (0 for no values)."""
    if not values:
        return 0
    if not any(isinstance(value, Tensor) for value in values):
        return max(values)
    counts = {str(i): v for i, v in enumerate(values)}
    batch, device = _batch_size(counts), _device(counts)
    stacked = [
        torch.as_tensor(value, dtype=cost_dtype(device), device=device).expand(batch) for value in values
    ]
    return torch.stack(stacked).amax(dim=0)  # [calls, N] → [N]


def _device(counts: Mapping[str, CountValue]) -> torch.device:
    """The device of the first Tensor count (the CPU when every count is an int)."""
    return next((value.device for value in counts.values() if isinstance(value, Tensor)), torch.device("cpu"))


def cost_dtype(device: torch.device) -> torch.dtype:
    """Exact cost arithmetic: float64, except on MPS (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _batch_size(counts: Mapping[str, CountValue]) -> int | None:
    """N when some count is a Tensor [N] (1 for 0-d tensors), else None (plain ints)."""
    sizes = [value.numel() for value in counts.values() if isinstance(value, Tensor)]
    if not sizes:
        return None
    return max(sizes)
