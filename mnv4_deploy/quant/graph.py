"""Where the quantizers go: trace the canonical model and place one per quantized tensor.

The placement follows what int8 runtimes fuse, not what PyTorch's module tree looks like:
- a conv/linear/add followed only by a ReLU shares one output quantizer, placed after the
  ReLU (the runtime folds the ReLU into the output's zero point);
- reshape-like ops (reshape, transpose, flatten, slicing, zero padding) move integers without
  changing them, so they re-quantize with their input's grid (a "shared" point, numerically a
  no-op; a zero pad adds only zeros, exactly on the grid because the zero point is an integer)
  and identity-like ops (Identity, Dropout, contiguous) get nothing;
- every other op producing a float tensor from data (add, mul, matmul, softmax, pooling,
  concat, GELU, per-channel affines) gets its own output quantizer, and so does the input.

A *unit* is what sensitivity analysis and fallback switch between int8 and float: an op
(with its weights, if any) together with its output quantizer.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..canonicalize import ChannelAffine
from ..errors import UsageError
from .modules import FakeQuant, wrap_layer

WEIGHTED = (nn.Conv2d, nn.Linear)
FUSED_ACT_MODULES = (nn.ReLU, nn.ReLU6)
FUSED_ACT_FUNCS = {F.relu, torch.relu, F.relu6}
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
RESHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.MaxPool2d)
RESHAPE_METHODS = {"reshape", "view", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
                   "expand", "expand_as", "view_as", "t"}
RESHAPE_FUNCS = {torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.squeeze,
                 torch.unsqueeze, torch.t, operator.getitem, F.max_pool2d}
# ops returning a tuple of pieces of their input (each piece then taken by getitem, reshape-like)
SPLIT_METHODS = {"unbind", "chunk", "split", "tensor_split"}
SPLIT_FUNCS = {torch.unbind, torch.chunk, torch.split, torch.tensor_split}
LEAF_MODULES = WEIGHTED + FUSED_ACT_MODULES + IDENTITY_MODULES + RESHAPE_MODULES + (ChannelAffine,)


@dataclass
class Unit:
    """One switchable piece: an op, its weights (kind 'layer') and its output quantizer."""

    name: str
    kind: str  # "input" | "layer" | "op"
    op: str  # what it computes, for reports ("Conv2d 3x3 dw", "add", "softmax")
    node: str  # fx node producing the value
    point: str | None = None  # the quantizer of its output
    act: str | None = None  # fused activation node, when one follows
    input_point: str | None = None  # for layers: the quantizer feeding it, if any


@dataclass
class Point:
    """One per-tensor activation quantizer in the fake-quant graph."""

    name: str
    unit: str  # owning unit
    anchor: str  # fx node whose output it quantizes
    module: str = ""  # path of its FakeQuant module
    shared_from: str | None = None  # re-quantizes with this point's grid (reshape-like ops)


@dataclass
class QuantGraph:
    """The fake-quant GraphModule plus the bookkeeping of units and points."""

    gm: fx.GraphModule
    units: dict[str, Unit] = field(default_factory=dict)
    points: dict[str, Point] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [u.name for u in self.units.values() if u.kind == "layer"]

    def module(self, path: str) -> nn.Module:
        return self.gm.get_submodule(path)

    def layer_module(self, unit: str) -> nn.Module:
        """The quant-aware module of a weighted-layer unit (its module path is the unit name)."""
        return self.gm.get_submodule(unit)

    def fake_quant(self, point: str) -> FakeQuant:
        return self.gm.get_submodule(self.points[point].module)

    def root_point(self, point: str) -> str:
        while self.points[point].shared_from is not None:
            point = self.points[point].shared_from
        return point


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_MODULES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace the canonical model at the granularity quantization needs."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        path, kind = next(reversed(tracer.module_stack.values())) if tracer.module_stack else ("", None)
        layer = f" in layer {path} ({getattr(kind, '__name__', kind)})" if path else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UsageError(f"cannot trace {type(model).__name__} for quantization{layer}: {type(exc).__name__}: {first}",
                         "quantization needs a model torch.fx can trace: no Python iteration or branching on "
                         "tensor values or shapes (unpack `b, c, h, w = x.shape` instead of `*x.shape[2:]`)") from None
    return fx.GraphModule(model, graph)


def _is_float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.Conv2d):
            k = "x".join(map(str, m.kernel_size))
            dw = " dw" if m.groups > 1 and m.groups == m.in_channels else ""
            return f"Conv2d {k}{dw} {m.in_channels}->{m.out_channels}"
        if isinstance(m, nn.Linear):
            return f"Linear {m.in_features}->{m.out_features}"
        return type(m).__name__
    return getattr(node.target, "__name__", str(node.target))


def _is_split(node: fx.Node) -> bool:
    split = (node.op == "call_method" and node.target in SPLIT_METHODS) or (
        node.op == "call_function" and node.target in SPLIT_FUNCS)
    return split and bool(node.args) and isinstance(node.args[0], fx.Node)


def _is_zero_pad_call(node: fx.Node) -> bool:
    """`F.pad(x, pads)` in constant mode with value 0 (the default)."""
    if node.op != "call_function" or node.target not in (F.pad, torch._C._nn.pad):
        return False
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    return mode == "constant" and not value


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """weighted | act | identity | reshape | op."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.ConstantPad2d) and float(m.value) == 0.0:
            return "reshape"
        for kind, types in (("weighted", WEIGHTED), ("act", FUSED_ACT_MODULES),
                            ("identity", IDENTITY_MODULES), ("reshape", RESHAPE_MODULES)):
            if isinstance(m, types):
                return kind
        return "op"
    if node.op == "call_method":
        if node.target in IDENTITY_METHODS:
            return "identity"
        if node.target in RESHAPE_METHODS:
            return "reshape"
        return "act" if node.target in ("relu", "relu6") else "op"
    if node.op == "call_function":
        if node.target in FUSED_ACT_FUNCS:
            return "act"
        if node.target in RESHAPE_FUNCS or _is_zero_pad_call(node):
            return "reshape"
    return "op"


def _unit_name(gm: fx.GraphModule, node: fx.Node, taken: dict) -> str:
    name = str(node.target) if node.op == "call_module" else node.name
    base, i = name, 1
    while name in taken:
        name, i = f"{base}#{i}", i + 1
    return name


def build_quant_graph(model: nn.Module, example: torch.Tensor) -> QuantGraph:
    """Trace `model` (a canonical, folded model) and insert disabled quantizers at every point.

    The returned graph computes the float function until ranges and weights are set.
    """
    gm = trace(copy.deepcopy(model).eval())
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    qg = QuantGraph(gm)
    source: dict[str, str | None] = {}  # node -> point whose grid its value lies on
    dynamic: set[str] = set()  # nodes that depend on the input
    owner: dict[str, str] = {}  # producer node -> unit awaiting a fused activation

    def new_unit(node: fx.Node, kind: str, op: str) -> Unit:
        unit = Unit(_unit_name(gm, node, qg.units), kind, op, node.name)
        unit.point = unit.name
        qg.units[unit.name] = unit
        qg.points[unit.name] = Point(unit.name, unit.name, node.name)
        source[node.name] = unit.name
        return unit

    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    shared = sorted({t for t in calls if calls.count(t) > 1 and isinstance(gm.get_submodule(t), WEIGHTED)})
    if shared:
        raise UsageError(f"layers called more than once (shared weights) cannot be quantized per call: {shared[:3]}",
                         "canonicalize a model without weight sharing")
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder":
            dynamic.add(node.name)
            if _is_float_tensor(node):
                name = "input" if "input" not in qg.units else f"input_{node.name}"
                qg.units[name] = Unit(name, "input", "input", node.name, point=name)
                qg.points[name] = Point(name, name, node.name)
                source[node.name] = name
            continue
        if node.op == "output" or not any(n.name in dynamic for n in inputs):
            continue
        dynamic.add(node.name)
        if not _is_float_tensor(node):
            if _is_split(node):  # its pieces keep the input's grid (LiteRT's SPLIT/UNPACK cannot requantize)
                source[node.name] = source.get(node.args[0].name)
            continue
        kind = _kind(gm, node)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        src = source.get(first.name) if first is not None else None
        if kind == "identity":
            source[node.name] = src
            if first is not None and first.name in owner and len(first.users) == 1:
                owner[node.name] = owner.pop(first.name)  # a folded BN left an Identity before the ReLU
        elif kind == "reshape" and (src is not None or first is None or _is_float_tensor(first)):
            if src is None:
                source[node.name] = None
            else:
                name = f"{node.name}@{qg.points[src].unit}"
                qg.points[name] = Point(name, qg.points[src].unit, node.name, shared_from=src)
                source[node.name] = name
        elif kind == "act" and first is not None and first.name in owner and len(first.users) == 1:
            unit = qg.units[owner.pop(first.name)]
            unit.act = node.name
            qg.points[unit.point].anchor = node.name
            source[first.name] = None
            source[node.name] = unit.point
        else:
            unit = new_unit(node, "layer" if kind == "weighted" else "op", _describe(gm, node))
            if kind == "weighted":
                unit.input_point = src
            if kind in ("weighted", "op"):
                owner[node.name] = unit.name
    _insert_quantizers(qg)
    return qg


def _insert_quantizers(qg: QuantGraph) -> None:
    """Swap weighted modules for quant-aware twins and add a FakeQuant after each anchor."""
    gm = qg.gm
    nodes = {n.name: n for n in gm.graph.nodes}
    for unit in qg.units.values():
        if unit.kind == "layer":
            path = nodes[unit.node].target
            parent, _, child = path.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, wrap_layer(unit.name, gm.get_submodule(path)))
    for i, point in enumerate(qg.points.values()):
        point.module = f"qpoint_{i}"
        gm.add_submodule(point.module, FakeQuant(point.name))
        anchor = nodes[point.anchor]
        with gm.graph.inserting_after(anchor):
            fq = gm.graph.call_module(point.module, (anchor,))
        anchor.replace_all_uses_with(fq, delete_user_cb=lambda user, fq=fq: user is not fq)
    gm.graph.lint()
    gm.recompile()
