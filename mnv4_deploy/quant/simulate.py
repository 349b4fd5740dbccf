"""Run the fake-quant graph as the float model and the int8 model side by side.

Layer-by-layer methods (bias correction, AdaRound) need, at every weighted layer, the
float model's input and the quantized model's input for the same images, with every
upstream correction already applied. Walking the graph node by node with two value
environments gives both in one pass; a step may change a layer before its output is
computed, and everything downstream sees the change. Values are freed after their last
use, so memory holds only the live tensors of the batch.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import fx

from .modules import QUANT_LAYERS, FakeQuant

FLOAT, QUANT = "float", "quant"
LayerStep = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], None]
PointHook = Callable[[str, torch.Tensor], None]


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """node -> values that can be dropped once it has run."""
    seen: set[fx.Node] = set()
    free: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for inp in node.all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                free.setdefault(node, []).append(inp)
    return free


def _fetch_attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def run_streams(gm: fx.GraphModule, x: torch.Tensor, streams: Iterable[str] = (FLOAT, QUANT),
                before_layer: LayerStep | None = None, on_point: PointHook | None = None,
                after_layer: Callable[[torch.nn.Module, dict], None] | None = None) -> dict[str, torch.Tensor]:
    """Outputs of the float and/or quantized model for batch `x`.

    before_layer(module, x_float, x_quant): called at each quant-aware layer before its
      outputs are computed (needs both streams); it may modify the module.
    on_point(point, value): the float value arriving at each quantizer (for calibration).
    after_layer(module, {stream: output}): the layer's raw outputs (before any activation).
    """
    streams = tuple(streams)
    env: dict[str, dict[fx.Node, object]] = {s: {} for s in streams}
    free = _last_uses(gm.graph)
    modules = dict(gm.named_modules())
    result: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op == "output":
                for s in streams:
                    result[s] = fx.node.map_arg(node.args[0], lambda n, s=s: env[s][n])
                break
            for s in streams:
                values = env[s]
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if node.op == "placeholder":
                    out = x
                elif node.op == "get_attr":
                    out = _fetch_attr(gm, node.target)
                elif node.op == "call_module":
                    mod = modules[node.target]
                    if isinstance(mod, FakeQuant):
                        if s == FLOAT and on_point is not None:
                            on_point(mod.point, args[0])
                        out = mod.forward_float(args[0]) if s == FLOAT else mod(args[0])
                    elif isinstance(mod, QUANT_LAYERS):
                        if s == streams[0] and before_layer is not None:
                            before_layer(mod, env[FLOAT][node.args[0]], env[QUANT][node.args[0]])
                        out = mod.forward_float(*args) if s == FLOAT else mod(*args)
                    else:
                        out = mod(*args, **kwargs)
                elif node.op == "call_function":
                    out = node.target(*args, **kwargs)
                else:  # call_method
                    out = getattr(args[0], node.target)(*args[1:], **kwargs)
                values[node] = out
            if after_layer is not None and node.op == "call_module" and isinstance(modules[node.target], QUANT_LAYERS):
                after_layer(modules[node.target], {s: env[s][node] for s in streams})
            for dead in free.get(node, ()):
                for s in streams:
                    env[s].pop(dead, None)
    return result


def batches(data: "torch.Tensor | Any", size: int) -> Iterable[torch.Tensor]:
    """`size` images at a time: slices of a tensor, or a streamed set's `batches(size)` (same boundaries)."""
    if hasattr(data, "batches"):
        for batch in data.batches(size):
            yield torch.from_numpy(batch)
        return
    for i in range(0, data.shape[0], max(1, size)):
        yield data[i:i + size]
