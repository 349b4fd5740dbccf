"""Activations the converter folded into constants, written on the plan's activation grids.

A path that depends on no input (learned tokens, and a Linear applied to them: Mobile-Former's
first token query) is folded by the converter into a constant tensor. ai-edge-quantizer then
quantizes it as if it were weights: symmetric, often per channel, on its own scale. The plan
quantizes that value as an activation (its point's asymmetric grid), and LiteRT's int8
BATCH_MATMUL reads a per-channel operand with one scale: a random-init token net's first
attention came out as all zero points (tflite-int8 at cosine 0.987 vs the plan's emulation).
So each non-weight int8 constant whose values are one of the plan's points (within half of its
own quantization step) is re-quantized per tensor on that point's grid: the numbers the
emulation computes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metadata import load_model_object, save_model_object
from .plan_ranges import candidate_layouts
from .plan_weights import op_names

_WEIGHT_OPERANDS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2),
                    "TRANSPOSE_CONV": (0, 1, 3)}


def _dequantized(model: Any, tensor: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float values, per-element step) of an int8 constant, per tensor or per channel."""
    codes = np.frombuffer(bytes(np.asarray(model.buffers[tensor.buffer].data, np.uint8)), np.int8)
    codes = codes.reshape(tensor.shape).astype(np.float64)
    q = tensor.quantization
    scale, zero = np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.float64)
    if scale.size > 1:
        shape = [1] * codes.ndim
        shape[q.quantizedDimension] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    else:
        scale, zero = scale.reshape(()), zero.reshape(())
    return (codes - zero) * scale, np.broadcast_to(scale, codes.shape)


def _folded_constants(model: Any) -> list[Any]:
    """Int8 constant tensors other than a layer's weights or bias, each once."""
    graph, names = model.subgraphs[0], op_names(model)
    seen: dict[int, Any] = {}
    for op in graph.operators:
        skip = _WEIGHT_OPERANDS.get(names[op.opcodeIndex], ())
        for position, index in enumerate(op.inputs):
            if index < 0 or position in skip or index in seen:
                continue
            t = graph.tensors[index]
            if (t.type == 9 and t.buffer and model.buffers[t.buffer].data is not None  # 9: INT8
                    and t.quantization is not None and t.quantization.scale is not None):
                seen[index] = t
    return list(seen.values())


def write_plan_constants(path: Path, point_values: dict[str, np.ndarray], ranges: dict[str, Any]) -> dict[str, Any]:
    """Rewrite `path` in place; `point_values` holds the plan's (float model's) value at each point."""
    model, external = load_model_object(path)
    rewritten, unmatched = [], 0
    for tensor in _folded_constants(model):
        values, step = _dequantized(model, tensor)
        best: tuple[str, np.ndarray, float] | None = None
        for point, value in point_values.items():
            for candidate in candidate_layouts(value, tuple(tensor.shape)):
                error = float(np.max(np.abs(candidate - values) / step))
                if error <= 0.5 + 1e-3 and (best is None or error < best[2]):
                    best = (point, candidate, error)
        if best is None:
            unmatched += 1
            continue
        point, exact, _ = best
        q = ranges[point].as_dtype("int8")
        codes = q.quantize(exact).astype(np.int8)
        model.buffers[tensor.buffer].data = np.frombuffer(codes.tobytes(), np.uint8)
        tensor.quantization.scale, tensor.quantization.zeroPoint = [float(q.scale)], [int(q.zero_point)]
        tensor.quantization.quantizedDimension = 0
        rewritten.append(point)
    if rewritten:
        save_model_object(path, model, external)
    return {"constants_on_plan_grid": rewritten, "constants_unmatched": unmatched}
