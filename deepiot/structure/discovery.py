"""Discovery: trace the model, run it on the example inputs, and follow every group through the graph.

`Discovery` walks the `torch.fx` graph once in forward order. For each value it keeps an `Info` (which
dimension hidden-element groups index, along which `Layout`); op rules (`deepiot.structure.rules`) say
how each op moves that dimension. Producers create groups, residual adds and friends merge them
(union-find), values reaching the model output pin them (never compressed). Anything not understood
that touches a group's channels raises `StructureError` — never a silent skip. `resolve()` then turns
the records into the final groups, mask points, slicing specs and cost terms (`StructureData`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from deepiot.structure.cost import CostModel, Term, combine
from deepiot.structure.errors import StructureError
from deepiot.structure.infos import (
    Info,
    StackedInfo,
    TensorInfo,
    TensorMeta,
    TupleInfo,
    info_groups,
    to_meta,
)
from deepiot.structure.layout import Layout, Segment, layout_width, rename, tile
from deepiot.structure.recurrent import GATES, RECURRENT_TYPES

ExampleInputs = Tensor | tuple[Tensor, ...]
MaskSegment = tuple[str | None, int, int, str]  # (group, count, repeat, mode: "mask" | "indicator" | "none")
MaskSpec = tuple[tuple[MaskSegment, ...], int, int | None]  # (segments, channel_dim, batch_dim)

HOW_TO_DECLARE = (
    "To compress the rest of the model, keep the producer(s) of these channels uncompressed with "
    "Structure.from_model(model, example_inputs, exclude={producers!r}), or rewrite the op with supported "
    "layers (Linear/Conv1d/Conv2d/LSTM/GRU/RNN, BatchNorm, activations, pooling, dropout, flatten/view, cat, "
    "residual add/mul)."
)


@dataclass(frozen=True)
class Producer:
    """One producer id: a Linear/Conv module, or one layer of an LSTM/GRU/RNN ("<module>.l<i>")."""

    kind: str  # "linear" | "conv" | "rnn"
    size: int
    module: str
    layer: int | None = None


@dataclass(frozen=True)
class ModuleUse:
    """How a sliceable module's dimensions are indexed: input layout and output layout(s).

    kind: "linear" | "conv" | "batchnorm" | "rnn"; `outputs` has one layout (Linear/Conv), one per layer
    (RNN) or none (BatchNorm: its only dimension is `input`).
    """

    kind: str
    input: Layout
    outputs: tuple[Layout, ...] = ()


@dataclass(frozen=True)
class StructureData:
    """Everything discovery hands to `Structure`: groups and the resolved records (group names)."""

    groups: tuple[tuple[str, str, int, tuple[str, ...]], ...]  # (name, kind, size, producers)
    excluded: dict[str, str]
    signature: tuple[tuple[str, str, str], ...]
    module_uses: dict[str, ModuleUse]
    mask_edges: dict[str, MaskSpec]
    rnn_nodes: dict[str, tuple[str | None, ...]]
    reshapes: dict[str, tuple[int, Layout]]
    stacked_indexing: dict[str, tuple[str, int]]
    producers: dict[str, Producer]
    cost_model: CostModel


def graph_signature(graph_module: fx.GraphModule) -> tuple[tuple[str, str, str], ...]:
    """(name, op, target) of every node: two traces of the same architecture have equal signatures."""
    return tuple(
        (
            node.name,
            node.op,
            node.target if isinstance(node.target, str) else getattr(node.target, "__name__", ""),
        )
        for node in graph_module.graph.nodes
    )


def trace(model: nn.Module) -> fx.GraphModule:
    """`torch.fx.symbolic_trace`, with a clear error when the model's forward cannot be traced."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise StructureError(
            f"torch.fx could not trace {type(model).__name__}.forward ({type(error).__name__}: {error}). "
            "deepiot discovers hidden-element groups from the traced graph; data-dependent Python control "
            "flow must be moved into a submodule that fx treats as a leaf, or removed."
        ) from error


class _Recorder(fx.Interpreter):
    """Runs the traced graph and keeps the `TensorMeta` of every node's value."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__(graph_module)
        self.metas: dict[str, Any] = {}

    def run_node(self, node: fx.Node) -> Any:
        value = super().run_node(node)
        self.metas[node.name] = to_meta(value)
        return value


def as_input_tuple(example_inputs: ExampleInputs) -> tuple[Tensor, ...]:
    """Example inputs as a tuple of batch-first tensors, checked."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not inputs or not all(isinstance(value, Tensor) and value.dim() >= 1 for value in inputs):
        raise StructureError(
            "example_inputs must be a tensor or a tuple of tensors with the batch as dimension 0, got "
            f"{type(example_inputs).__name__}."
        )
    return inputs


@torch.no_grad()
def record_metas(graph_module: fx.GraphModule, inputs: tuple[Tensor, ...]) -> tuple[dict, dict]:
    """Node metas at the example batch size n and at n+1 (first sample repeated): dims that grow are batch."""
    grown = tuple(torch.cat([value, value[:1]]) for value in inputs)  # [n+1, ...]
    modes = {module: module.training for module in graph_module.modules()}
    runs = []
    try:
        graph_module.eval()
        for run_inputs in (inputs, grown):
            recorder = _Recorder(graph_module)
            recorder.run(*run_inputs)
            runs.append(recorder.metas)
    except Exception as error:
        raise StructureError(
            f"running the traced model on example inputs of shape {[tuple(v.shape) for v in inputs]} and on "
            f"one more sample failed ({type(error).__name__}: {_first_line(error)}); the example inputs must "
            "have the shape the model takes, and the model must accept any batch size with the batch as "
            "dimension 0 of every input."
        ) from error
    finally:
        for module, training in modes.items():
            module.training = training
    return runs[0], runs[1]


class Discovery:
    """State of one discovery pass (see module docstring); op rules call its methods."""

    def __init__(self, model: nn.Module, example_inputs: ExampleInputs, exclude: Sequence[str] = ()) -> None:
        self.model = model
        self.graph_module = trace(model)
        self.inputs = as_input_tuple(example_inputs)
        self.batch = self.inputs[0].shape[0]
        self.metas, self.metas_grown = record_metas(self.graph_module, self.inputs)
        self.exclude = set(exclude)
        self.infos: dict[str, Info] = {}
        self.parent: dict[str, str] = {}
        self.producers: dict[str, Producer] = {}
        self.pinned: dict[str, str] = {}
        self.module_uses: dict[str, list[tuple[fx.Node, ModuleUse]]] = {}
        self.edges: dict[str, tuple[TensorInfo, int | None]] = {}
        self.rnn_nodes: dict[str, tuple[str | None, ...]] = {}
        self.reshapes: dict[str, int] = {}
        self.stacked_indexing: dict[str, tuple[str, int]] = {}
        self.mac_terms: list[tuple[int, tuple[Layout, ...]]] = []
        self.activation_calls: list[list[tuple[int, tuple[Layout, ...]]]] = []
        self.unknown_macs: list[str] = []
        self.seen_producer_names: set[str] = set()

    # ------------------------------------------------------------------ the walk

    def run(self, node_info: Callable[[Discovery, fx.Node], Info]) -> None:
        """Compute the info of every node in forward order with the op rules `node_info`
        (`deepiot.structure.rules.node_info`; passed in because the rules build on this module's types)."""
        for node in self.graph_module.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.infos[node.name] = None
            elif node.op == "output":
                for group in self.groups_in_args(node):
                    self.pin(group, "its values reach the model output (like the logit layer)")
            else:
                self.check_no_cell_state(node)
                self.infos[node.name] = node_info(self, node)
                if node.op == "call_module":
                    self.record_activation_call(node)

    # ------------------------------------------------------------------ accessors for rules

    def info(self, value: Any) -> Info:
        return self.infos.get(value.name) if isinstance(value, fx.Node) else None

    def meta(self, value: Any, grown: bool = False) -> Any:
        metas = self.metas_grown if grown else self.metas
        return metas.get(value.name) if isinstance(value, fx.Node) else value

    def shape(self, value: fx.Node, grown: bool = False) -> tuple[int, ...]:
        meta = self.meta(value, grown)
        if not isinstance(meta, TensorMeta):
            raise StructureError(
                f"node '{value.name}' was expected to produce a tensor, got {type(meta).__name__}"
            )
        return meta.shape

    def batch_dim(self, value: fx.Node) -> int | None:
        """The dimension that grows with the batch (n → n+1), or None (no batch, or batch merged)."""
        small, large = self.shape(value), self.shape(value, grown=True)
        changed = [d for d, (a, b) in enumerate(zip(small, large, strict=True)) if a != b]
        if len(changed) == 1 and small[changed[0]] == self.batch and large[changed[0]] == self.batch + 1:
            return changed[0]
        return None

    def per_sample_numel(self, small: TensorMeta, large: TensorMeta) -> int:
        """Elements per sample: growth from n to n+1 samples (or all elements when batch-independent)."""
        growth = large.numel - small.numel
        return growth if growth > 0 else small.numel

    def groups_in_args(self, node: fx.Node) -> list[str]:
        found: list[str] = []
        for value in node.all_input_nodes:
            found += info_groups(self.info(value))
        return list(dict.fromkeys(found))

    def module(self, node: fx.Node) -> nn.Module:
        return self.graph_module.get_submodule(node.target)

    # ------------------------------------------------------------------ errors

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' of type {type(self.module(node)).__name__}"
        if node.op == "call_method":
            return f"method Tensor.{node.target}"
        target = node.target
        return f"function {getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"

    def fail(self, node: fx.Node, reason: str) -> None:
        """Raise a `StructureError` naming the node, its op/module type and how to declare groups.

        The producers named are every member of the merged groups involved (a residual stream's stem and
        all its branches), so one `exclude=[...]` with them gets past this node.
        """
        producers = self.group_members(self.groups_in_args(node))
        raise StructureError(
            f"deepiot cannot follow hidden-element groups {producers} through node '{node.name}' "
            f"({self.describe(node)}): {reason}. " + HOW_TO_DECLARE.format(producers=producers)
        )

    def group_members(self, groups: Sequence[str]) -> list[str]:
        """Exclude-able names of every producer merged with any of `groups` (module, or "<rnn>.l<i>")."""
        roots = {self.find(group) for group in groups}
        members = [producer for producer in self.producers if self.find(producer) in roots]
        return sorted({self.producers[p].module if self.producers[p].layer is None else p for p in members})

    def check_no_cell_state(self, node: fx.Node) -> None:
        for value in node.all_input_nodes:
            info = self.info(value)
            if isinstance(info, TensorInfo) and info.cell:
                self.fail(
                    node,
                    "it uses an LSTM cell state c_n, which the masked recurrence leaves unmasked (a dropped "
                    "unit's c is not zero); use h_n or the output sequence instead",
                )

    # ------------------------------------------------------------------ producers and merging

    def producer(self, name: str, kind: str, size: int, module: str, layer: int | None = None) -> str | None:
        """Register producer `name` (id of a new group) unless the user excluded it; returns the id or None."""
        self.seen_producer_names.update({name, module})
        if name in self.exclude or module in self.exclude:
            return None
        if name not in self.producers:
            self.producers[name] = Producer(kind, size, module, layer)
            self.parent[name] = name
        return name

    def find(self, group: str) -> str:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def union(self, first: str, second: str) -> None:
        """Merge two producers into one group; the earlier producer (forward order) names it."""
        root_a, root_b = self.find(first), self.find(second)
        if root_a == root_b:
            return
        order = list(self.producers)
        keep, drop = sorted((root_a, root_b), key=order.index)
        self.parent[drop] = keep

    def pin(self, group: str, reason: str) -> None:
        """Mark a producer as never compressible (its whole merged group follows)."""
        self.pinned.setdefault(group, reason)

    def pin_layout(self, layout: Layout, reason: str) -> None:
        for segment in layout:
            if segment.group is not None:
                self.pin(segment.group, reason)

    def merge_layouts(self, node: fx.Node, first: Layout, second: Layout) -> Layout:
        """Identify two layouts position by position (residual add, cat along another dim): merge groups."""
        shape_a = [(s.count, s.repeat) for s in first]
        shape_b = [(s.count, s.repeat) for s in second]
        if shape_a != shape_b:
            self.fail(
                node,
                f"its operands' channels do not line up group by group ({_show(first)} vs {_show(second)}), so "
                "no single kept-index set slices both",
            )
        for segment_a, segment_b in zip(first, second, strict=True):
            if segment_a.group is not None and segment_b.group is not None:
                self.union(segment_a.group, segment_b.group)
            elif segment_a.group is not None or segment_b.group is not None:
                reason = f"'{node.name}' combines its channels with channels of no group"
                self.pin(segment_a.group or segment_b.group, reason)
        return tuple(a if a.group is not None else b for a, b in zip(first, second, strict=True))

    # ------------------------------------------------------------------ records for masking/slicing/cost

    def use_module(self, node: fx.Node, use: ModuleUse) -> None:
        self.module_uses.setdefault(node.target, []).append((node, use))

    def mask_edge(self, node: fx.Node, info: TensorInfo | None) -> None:
        """The consumer `node` reads `info`'s channels through its first argument: mask them there."""
        if info is not None:
            self.edges[node.name] = (info, self.batch_dim(node.args[0]))

    def macs(self, coefficient: int, layouts: Sequence[Layout]) -> None:
        self.mac_terms.append((coefficient, tuple(layouts)))

    def record_activation_call(self, node: fx.Node) -> None:
        """Input + output bytes of one leaf-module call at batch 1, as terms of kept counts.

        An LSTM/GRU/RNN records one call per layer (`rnn_layer_calls`), as the cost contract defines.
        """
        if isinstance(self.module(node), RECURRENT_TYPES):
            self.activation_calls += self.rnn_layer_calls(node)
            return
        terms: list[tuple[int, tuple[Layout, ...]]] = []
        for value in [*node.all_input_nodes, node]:
            terms += self.byte_terms(value)
        self.activation_calls.append(terms)

    def rnn_layer_calls(self, node: fx.Node) -> list[list[tuple[int, tuple[Layout, ...]]]]:
        """Bytes at batch 1 of each layer of one LSTM/GRU/RNN call, each layer counted as a call of its own.

        Layer l: input sequence (the module input, or layer l-1's output) + output sequence + final states
        h_n[l] (and c_n[l]) of all directions + its share of an initial state hx (the same definition as
        `deepiot.cost.counter.rnn_layer_bytes`). Sequences are steps · directions · kept units of a layer.
        """
        module = self.module(node)
        use = next(use for call, use in self.module_uses[node.target] if call is node)
        source = node.args[0]
        directions = 2 if module.bidirectional else 1
        layers = len(use.outputs)
        element_size = self.meta(node)[0].element_size  # output sequence [N, T, D·H_top]
        steps = self.shape(source)[1 if module.batch_first else 0]
        step_bytes = steps * element_size
        states_per_unit = directions * element_size * (2 if isinstance(module, nn.LSTM) else 1)
        initial_state = [
            (coefficient // layers, layouts)
            for value in node.all_input_nodes
            if value is not source
            for coefficient, layouts in self.byte_terms(value)
        ]
        calls = []
        for layer, hidden in enumerate(use.outputs):
            if layer == 0:
                layer_input = self.byte_terms(source)
            else:  # layer l-1's output sequence [T, D·H_(l-1)]
                layer_input = [(step_bytes, (tile(use.outputs[layer - 1], directions),))]
            layer_output = [(step_bytes, (tile(hidden, directions),)), (states_per_unit, (hidden,))]
            calls.append([*layer_input, *layer_output, *initial_state])
        return calls

    def byte_terms(self, value: fx.Node) -> list[tuple[int, tuple[Layout, ...]]]:
        """Bytes at batch 1 of the value of node `value`, as terms of kept counts."""
        return self.tensor_byte_terms(self.info(value), self.meta(value), self.meta(value, grown=True))

    def tensor_byte_terms(self, info: Info, small: Any, large: Any) -> list[tuple[int, tuple[Layout, ...]]]:
        """Bytes at batch 1 of a (nested) value: fixed, or per-sample bytes / channel size × kept width."""
        if isinstance(small, TensorMeta):
            per_sample = self.per_sample_numel(small, large) * small.element_size
            if isinstance(info, StackedInfo):
                return [
                    _scaled(per_sample // len(info.items), item.layout)
                    if item
                    else (per_sample // len(info.items), ())
                    for item in info.items
                ]
            if isinstance(info, TensorInfo):
                return [_scaled(per_sample, info.layout)]
            return [(per_sample, ())]
        if isinstance(small, tuple):
            items = info.items if isinstance(info, TupleInfo) else (None,) * len(small)
            return [
                term
                for i, s, l in zip(items, small, large, strict=True)
                for term in self.tensor_byte_terms(i, s, l)
            ]
        return []

    # ------------------------------------------------------------------ resolution

    def resolve(self, declared: Sequence[Sequence[str]]) -> StructureData:
        """Apply declarations, name the final groups and rename every record to group names."""
        self.check_exclusions()
        self.apply_declarations(declared)
        names = self.group_names()
        groups = self.final_groups(names)
        kinds = {name: kind for name, kind, _, _ in groups}
        return StructureData(
            groups=tuple(groups),
            excluded=self.excluded_reasons(names),
            signature=graph_signature(self.graph_module),
            module_uses=self.resolved_module_uses(names),
            mask_edges=self.resolved_mask_edges(names, kinds),
            rnn_nodes={
                node: tuple(names[g] if g else None for g in layers)
                for node, layers in self.rnn_nodes.items()
            },
            reshapes={
                node: (dim, rename(self.infos[node].layout, names)) for node, dim in self.reshapes.items()
            },
            stacked_indexing=dict(self.stacked_indexing),
            producers=dict(self.producers),
            cost_model=self.resolved_cost_model(names),
        )

    def check_exclusions(self) -> None:
        unknown = sorted(self.exclude - self.seen_producer_names)
        if unknown:
            raise StructureError(
                f"exclude names {unknown}, which are not producers of this model; producers are the "
                f"Linear/Conv/LSTM/GRU/RNN modules called in forward: {sorted(self.seen_producer_names)} "
                "(an RNN layer alone is '<module>.l<i>')."
            )

    def apply_declarations(self, declared: Sequence[Sequence[str]]) -> None:
        for shared in declared:
            if isinstance(shared, str) or len(shared) < 2:
                raise StructureError(
                    f"declared must be a list of lists of at least two producer names sharing one mask, got "
                    f"entry {shared!r}."
                )
            compressible = [name for name in self.producers if name not in self.pinned]
            for name in shared:
                if name not in compressible:
                    why = f" ({self.pinned[name]})" if name in self.pinned else ""
                    raise StructureError(
                        f"declared group {list(shared)} names '{name}', which is not a compressible producer"
                        f"{why}; compressible producers: {compressible}."
                    )
            sizes = {self.producers[name].size for name in shared}
            if len(sizes) != 1:
                raise StructureError(
                    f"declared group {list(shared)} joins producers of different sizes "
                    f"{[self.producers[name].size for name in shared]}; elements sharing a mask must pair up."
                )
            for name in shared[1:]:
                self.union(shared[0], name)

    def group_names(self) -> dict[str, str | None]:
        """Producer id → final group name (its earliest producer), None when the group is pinned."""
        pinned_roots = {self.find(group) for group in self.pinned}
        names: dict[str, str | None] = {}
        for group in self.producers:
            root = self.find(group)
            names[group] = None if root in pinned_roots else root
        return names

    def final_groups(self, names: Mapping[str, str | None]) -> list[tuple[str, str, int, tuple[str, ...]]]:
        members: dict[str, list[str]] = {}
        for group, name in names.items():
            if name is not None:
                members.setdefault(name, []).append(group)
        groups = []
        for name, producers in members.items():
            kinds = {self.producers[p].kind for p in producers}
            if "rnn" in kinds and len(kinds) > 1:
                raise StructureError(
                    f"group '{name}' joins recurrent layers with other producers {producers}; an RNN layer's "
                    "units are masked inside the recurrence, so they cannot share a mask with Linear/Conv "
                    "outputs. Exclude one side with Structure.from_model(..., exclude=[...])."
                )
            groups.append((name, self.producers[name].kind, self.producers[name].size, tuple(producers)))
        return groups

    def excluded_reasons(self, names: Mapping[str, str | None]) -> dict[str, str]:
        reasons = {name: "excluded by the caller" for name in sorted(self.exclude)}
        for group, name in names.items():
            if name is None:
                root_reasons = [r for g, r in self.pinned.items() if self.find(g) == self.find(group)]
                reasons[group] = root_reasons[0]
        return reasons

    def resolved_module_uses(self, names: Mapping[str, str | None]) -> dict[str, ModuleUse]:
        resolved = {}
        for module_name, uses in self.module_uses.items():
            variants = {
                ModuleUse(use.kind, rename(use.input, names), tuple(rename(o, names) for o in use.outputs))
                for _, use in uses
            }
            if len(variants) > 1:
                node = uses[1][0]
                raise StructureError(
                    f"module '{module_name}' is called several times (e.g. node '{node.name}') on inputs whose "
                    "channels belong to different groups, so one sliced module cannot serve every call. "
                    + HOW_TO_DECLARE.format(
                        producers=self.group_members(info_groups(self.info(node.args[0])))
                    )
                )
            resolved[module_name] = variants.pop()
        return resolved

    def resolved_mask_edges(
        self, names: Mapping[str, str | None], kinds: Mapping[str, str]
    ) -> dict[str, MaskSpec]:
        edges = {}
        for node_name, (info, batch_dim) in self.edges.items():
            segments = []
            for segment in rename(info.layout, names):
                mode = "none"
                if segment.group is not None:
                    mode = (
                        "mask" if kinds[segment.group] != "rnn" else ("none" if info.clean else "indicator")
                    )
                segments.append((segment.group, segment.count, segment.repeat, mode))
            if all(mode == "none" for *_, mode in segments):
                continue
            if batch_dim is None:
                raise StructureError(
                    f"the input of node '{node_name}' carries hidden-element channels but no batch dimension "
                    "deepiot can find (it must grow with the batch of the example inputs), so per-sample "
                    "masks cannot be applied there."
                )
            edges[node_name] = (tuple(segments), info.channel_dim, batch_dim)
        return edges

    def resolved_cost_model(self, names: Mapping[str, str | None]) -> CostModel:
        uses = self.resolved_module_uses(names)
        params, model_bytes = [], []
        parameter_names = {name for name, _ in self.model.named_parameters()}
        for key, tensor in self.model.state_dict().items():
            dims = _tensor_dims(self.model, key, tensor, uses)
            numel_term = Term.of(1, dims)
            model_bytes.append(Term.of(tensor.element_size(), dims))
            if key in parameter_names:
                params.append(numel_term)
        renamed = lambda raw: Term.of(raw[0], [rename(layout, names) for layout in raw[1]])  # noqa: E731
        return CostModel(
            params=combine(params),
            model_bytes=combine(model_bytes),
            macs=combine([renamed(raw) for raw in self.mac_terms]),
            activations=tuple(combine([renamed(raw) for raw in call]) for call in self.activation_calls),
            unknown_macs=tuple(self.unknown_macs),
        )


def _first_line(error: BaseException) -> str:
    """An exception's first message line (torch.fx appends a long traceback of the graph node)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _scaled(total: int, layout: Layout) -> tuple[int, tuple[Layout, ...]]:
    """A term `total` spread over the channel dimension: (total / width) · kept width."""
    width = layout_width(layout)
    return (total // width, (layout,))


def _show(layout: Layout) -> str:
    return (
        "["
        + ", ".join(
            f"{s.group or '-'}×{s.count}" + (f"(×{s.repeat})" if s.repeat > 1 else "") for s in layout
        )
        + "]"
    )


def fixed(size: int) -> Layout:
    """Layout of a dimension owned by no group."""
    return (Segment(None, size),)


def _tensor_dims(model: nn.Module, key: str, tensor: Tensor, uses: Mapping[str, ModuleUse]) -> list[Layout]:
    """Layout of every dimension of state_dict entry `key` (fixed unless its module is sliceable)."""
    module_name, _, attribute = key.rpartition(".")
    use = uses.get(module_name)
    dims = [fixed(size) for size in tensor.shape]
    if use is None:
        return dims
    if use.kind in ("linear", "conv"):
        if attribute == "weight":
            dims[0], dims[1] = use.outputs[0], use.input
        elif attribute == "bias":
            dims[0] = use.outputs[0]
    elif use.kind == "batchnorm" and attribute in ("weight", "bias", "running_mean", "running_var"):
        dims[0] = use.input
    elif use.kind == "rnn":
        dims = _rnn_tensor_dims(model.get_submodule(module_name), attribute, use, dims)
    return dims


def _rnn_tensor_dims(module: nn.Module, attribute: str, use: ModuleUse, dims: list[Layout]) -> list[Layout]:
    """weight_ih_l{k}: [G·H_k, in_k]; weight_hh_l{k}: [G·H_k, H_k]; biases [G·H_k] (gate-major rows)."""
    parts = attribute.split("_")  # e.g. ["weight", "ih", "l1", "reverse"]
    layer = int(parts[2][1:])
    hidden = use.outputs[layer]
    directions = 2 if module.bidirectional else 1
    rows = hidden * GATES[module.mode]
    layer_input = use.input if layer == 0 else use.outputs[layer - 1] * directions
    dims[0] = rows
    if parts[0] == "weight":
        dims[1] = layer_input if parts[1] == "ih" else hidden
    return dims


def with_clean(info: TensorInfo, clean: bool) -> TensorInfo:
    return replace(info, clean=clean)
