"""Float constant tensors beside int8 activations, given an int8 grid: what rknn-toolkit2 2.5.0 compiles.

A learned tensor added to an activation (Mobile-Former's tokens `(1, T, C)` plus a token
projection) reaches the plan's QDQ ONNX as a float initializer: the plan has no point for a
parameter, and its emulation adds it in float before the output's QuantizeLinear. The toolkit then
computes that Add in float16 between int8 neighbours, and its compiler dies in `OpEmit`
(`REGTASK: The bit width of field value exceeds the limit ... value: 0x1f`, SIGSEGV; measured:
docs/rknn.md, "Attention as users spell it"). Given a DequantizeLinear of its own, per tensor on the
finest symmetric int8 grid that holds it (max|c| / 127), the constant is an int8 operand and the op
stays int8. Each value moves by at most half a step of that grid, which is the one place where the
bundle's ONNX computes something other than the plan (reported as `constant_operands_on_int8_grid`
with the largest move). Scalars and per-channel vectors (one dimension above 1: an affine's scale
and shift, which the toolkit folds into an int8 BatchNormalization) are left as they are.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


def _is_tensor_constant(array: np.ndarray) -> bool:
    """A float constant with two or more dimensions above 1 (not a scalar, not a per-channel vector)."""
    return array.dtype == np.float32 and sum(size > 1 for size in array.shape) >= 2


def quantize_constant_operands(model: Any, constants: dict[str, Any], new_constant: Any) -> dict[str, Any]:
    """Give each tensor constant read by an element-wise op beside a dequantized activation an int8 grid.

    `constants`: tensor name -> TensorProto; `new_constant(name, array)` adds an initializer and
    returns its name. Returns how many were quantized and the largest value moved.
    """
    from onnx import helper, numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    dequantized: dict[str, str] = {}  # constant -> its DequantizeLinear output (one per constant)
    nodes: list[Any] = []
    worst = 0.0
    for node in model.graph.node:
        if node.op_type in ELEMENTWISE and any(
                getattr(producers.get(name), "op_type", None) == "DequantizeLinear" for name in node.input):
            for position, name in enumerate(node.input):
                if name not in constants:
                    continue
                values = numpy_helper.to_array(constants[name])
                if not _is_tensor_constant(values):
                    continue
                if name not in dequantized:
                    scale = np.float32(np.abs(values).max() / 127.0) or np.float32(1.0)
                    ints = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
                    worst = max(worst, float(np.abs(ints.astype(np.float32) * scale - values).max()))
                    out = f"{name}__rknn_int8"
                    nodes.append(helper.make_node(
                        "DequantizeLinear", [new_constant(f"{name}_int8", ints),
                                             new_constant(f"{name}_scale", np.array(scale, np.float32)),
                                             new_constant(f"{name}_zero_point", np.array(0, np.int8))],
                        [out], name=out))
                    dequantized[name] = out
                node.input[position] = dequantized[name]
        nodes.append(node)
    if dequantized:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return {"count": len(dequantized), "largest_move": worst}


__all__ = ["quantize_constant_operands"]
