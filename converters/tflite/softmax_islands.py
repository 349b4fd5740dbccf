"""Wide softmaxes of a quantized .tflite computed in float, their output on the plan's own grid.

LiteRT's int8 SOFTMAX always writes on 1/256 steps (zero point -128). A softmax spread over a
whole feature map (tokens attending to 3136 pixels: each weight ~1/3136) rounds to zero or one
step there, and the attention it feeds loses most of its signal (a Mobile-Former fell to cosine
0.81 vs float). The plan calibrates a finer grid for such a softmax (quant/calibrate.py); to
compute it, tflite-int8 turns each of those SOFTMAX ops into DEQUANTIZE -> float SOFTMAX ->
QUANTIZE and gives the int8 output tensor the plan's scale and zero point, and the same to every
tensor a RESHAPE/TRANSPOSE/... chain copies it into (those ops copy codes, never requantize). Its
consumers read their input's quantization at run time, so nothing else changes, and the emulation of the plan
itself (not its fixed-grid variant) is what the artifact computes. The accelerator targets
(EdgeTPU, Ethos-U) cannot run a float op on the NPU and keep the fixed-grid variant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .io_types import conversion_op
from .metadata import load_model_object, save_model_object
from .plan_ranges import TensorMatch

# int8 ops that copy codes without requantizing: their output must carry their input's grid
_SAME_GRID_OPS = frozenset({"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "GATHER", "SLICE", "STRIDED_SLICE",
                            "SPLIT", "SPLIT_V", "UNPACK", "BROADCAST_TO", "TILE"})
FLOAT_SOFTMAX_REASON = ("LiteRT's int8 SOFTMAX writes on a fixed 1/256 grid; this softmax spans {width} values "
                        "(~1/{width} each), so it runs in float and its output is quantized on the plan's grid")


def _float_tensor(graph: Any, like: Any, suffix: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature, tensor.buffer = list(like.shape), like.shapeSignature, 0
    tensor.name, tensor.type = (like.name or b"softmax") + suffix, schema.TensorType.FLOAT32
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _retag_downstream(model: Any, start: int, old: tuple[list, list], new: tuple[list, list]) -> int:
    """Give the new grid to every tensor a same-grid op chain copies `start` into; how many."""
    from .plan_weights import op_names

    graph, names = model.subgraphs[0], op_names(model)
    frontier, count = [start], 0
    while frontier:
        tensor = frontier.pop()
        for op in graph.operators:
            if names[op.opcodeIndex] not in _SAME_GRID_OPS or not op.inputs or op.inputs[0] != tensor:
                continue
            for index in op.outputs:
                q = graph.tensors[index].quantization
                if q is not None and q.scale is not None and (list(q.scale), list(q.zeroPoint)) == old:
                    q.scale, q.zeroPoint = list(new[0]), list(new[1])
                    frontier.append(index)
                    count += 1
    return count


def float_softmax_islands(path: Path, plan: Any, match: TensorMatch) -> list[dict[str, Any]]:
    """Rewrite, in place, every int8 SOFTMAX whose output is one of the plan's calibrated-grid
    softmaxes; return one record per island (op index, tensor, plan unit, width, grid, reason)."""
    from ai_edge_litert import schema_py_generated as schema

    wide = plan.calibrated_softmax_grids
    ranges = plan.activation_ranges
    model, external = load_model_object(path)
    graph = model.subgraphs[0]
    softmax = schema.BuiltinOperator.SOFTMAX
    islands: list[dict[str, Any]] = []
    rewritten: list[Any] = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != softmax:
            rewritten.append(op)
            continue
        source, output = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        point = match.points.get((output.name or b"").decode())
        unit = plan.point_unit(point) if point is not None else None
        if unit not in wide or output.type != schema.TensorType.INT8 or source.type != schema.TensorType.INT8:
            rewritten.append(op)
            continue
        q = ranges[point].as_dtype("int8")
        float_in, float_out = _float_tensor(graph, source, b"/float"), _float_tensor(graph, output, b"/float")
        previous = (list(output.quantization.scale), list(output.quantization.zeroPoint))
        output.quantization.scale, output.quantization.zeroPoint = [float(q.scale)], [int(q.zero_point)]
        copies = _retag_downstream(model, op.outputs[0], previous, ([float(q.scale)], [int(q.zero_point)]))
        quantize, dequantize = schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE
        rewritten += [conversion_op(model, dequantize, [op.inputs[0]], [float_in]), op]
        rewritten.append(conversion_op(model, quantize, [float_out], [op.outputs[0]]))
        op.inputs, op.outputs = [float_in], [float_out]
        islands.append({"tensor": output.name.decode(), "unit": unit, "width": wide[unit],
                        "grid": [float(q.scale), int(q.zero_point)], "copies_retagged": copies,
                        "reason": FLOAT_SOFTMAX_REASON.format(width=wide[unit])})
    if islands:
        graph.operators = rewritten
        save_model_object(path, model, external)
    return islands

