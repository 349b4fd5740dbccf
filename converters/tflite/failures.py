"""A converted .tflite that LiteRT cannot prepare, reported with the target, the op and our layer.

LiteRT's own message is a kernel assertion ("fully_connected.cc:341 ... (3136 != 24) Node number
112 (FULLY_CONNECTED) failed to prepare") that names neither the layer nor what to do. The node
number indexes the flatbuffer's operators, and litert-torch names each tensor after the module
stack that produced it (`pkg.Root/pkg.Block_0/pkg.FormerToMobile_to_mobile;...`: class and
attribute per called module), so the failing op's output tensor leads back to our module path.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import DeployError

_NODE = re.compile(r"Node number (\d+) \((\w+)\) failed to prepare")


def _segment_matches(segment: str, path: str, module: Any) -> bool:
    """`segment` ('pkg.Class_attr') names the module at `path` (class and attribute name)."""
    attr = path.rpartition(".")[2]
    return segment.endswith(f"_{attr}") and segment[: -len(attr) - 1].rpartition(".")[2] == type(module).__name__


def nearest_layer(tensor_name: str, model: Any) -> str | None:
    """Our module path for a litert-torch tensor name (the deepest module it names), or None."""
    segments = tensor_name.split(";")[0].split("/")
    root = type(model).__name__
    start = next((i + 1 for i, s in enumerate(segments) if s.rpartition(".")[2].split("_")[0] == root), 1)
    named = dict(model.named_modules())
    prefix, found = "", None
    for segment in segments[start:]:
        below = [p for p in named if p.startswith(prefix) and p != prefix and _segment_matches(segment, p, named[p])]
        if not below:
            break
        prefix = found = min(below, key=len)
        prefix += "."
    return found


def check_prepares(path: Path, model: Any, target: str) -> None:
    """Allocate `path` in LiteRT; a kernel that refuses its op becomes one line naming the target,
    the op and the nearest module of `model`, with LiteRT's text as detail."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(path)).allocate_tensors()
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        node = _NODE.search(text)
        if node is None:
            raise
        from .flatbuffer import read_tflite

        index, op = int(node[1]), node[2]
        ops = read_tflite(path).ops
        names = [t.name for t in ops[index].outputs] if index < len(ops) else []
        layer = next((found for found in (nearest_layer(n, model) for n in names) if found), None)
        where = f"layer {layer}" if layer else f"tensor {names[0]!r}" if names else "an unnamed tensor"
        raise DeployError(f"target {target}: LiteRT cannot prepare op #{index} {op} of {where} after conversion: "
                          f"{text[:240]}",
                          "the converter mis-lowered this layer; report it with the model, or use the onnx "
                          "or coreml targets") from None
