"""The plan's QDQ ONNX spelled so that rknn-toolkit2 2.5.0 keeps its numbers exactly.

Measured with the toolkit's simulator (docs/rknn.md, "How the toolkit reads a QDQ model"):
when a Q/DQ tensor's zero point is 0 (an int8 weight, an int8 activation, or a uint8
activation at 128, which it moves to int8), the toolkit turns it into its own symmetric form
by multiplying the scale by 128/127 and re-rounding the integers onto that grid
(q -> round(q * 127 / 128)). For an 8-bit weight channel that moves the large weights by one
step (1 LSB on ~15% of a convolution's outputs); a 7-bit channel (the x86 overflow fix,
integers within +-63) keeps its integers but computes with a scale 0.79% too large, a gain
that compounds layer by layer. A tensor whose zero point is not 0 is kept as written.

Two spellings keep the plan's numbers through that rule:
- weights: zero point -1 with the integers moved down by one. The values are the same
  ((q - 1) - (-1) = q), so the ONNX means exactly what it meant, in any runtime; the toolkit
  keeps such weights as they are (the plan's weights are symmetric, never -128).
- activations with a zero point of 0 (int8) or 128 (uint8): the scale times 127/128, which
  the toolkit multiplies back. Its symmetric grid keeps the code -128, so this is exact in the
  toolkit; the ONNX read by another runtime computes that tensor on a 0.79% finer grid.
And one more, for the toolkit's compiler rather than its numbers: every reader of an activation's
DequantizeLinear gets its own copy (`readers.py`; without it MNv4 hybrid attention segfaults the
compiler). Everything else is left alone.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from .readers import dedicate_dequantize_readers
from .constant_operands import quantize_constant_operands
from .linears import gemm_linears_as_matmul, linears_as_gemm

WEIGHT_ZERO_POINT = -1
TOOLKIT_RESCALE = 128.0 / 127.0  # what the toolkit multiplies a zero-point-0 scale by


def _constants(model: Any) -> dict[str, Any]:
    """Tensor name -> the TensorProto holding it (initializers and Constant nodes' values)."""
    found = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


def _set(model: Any, constants: dict[str, Any], name: str, array: np.ndarray) -> str:
    """A new initializer holding `array` (the old constant may feed other nodes too); its name."""
    from onnx import numpy_helper

    new_name = f"{name}__rknn"
    suffix = 0
    while new_name in constants:
        suffix += 1
        new_name = f"{name}__rknn{suffix}"
    tensor = numpy_helper.from_array(array, new_name)
    model.graph.initializer.append(tensor)
    constants[new_name] = tensor
    return new_name


def _is_zero_point_zero(zero_point: np.ndarray) -> bool:
    if zero_point.dtype == np.int8:
        return not zero_point.any()
    return zero_point.dtype == np.uint8 and bool(np.all(zero_point == 128))


def _respell_weights(model: Any, constants: dict[str, Any]) -> tuple[int, int]:
    """Constant int8 tensors behind a DequantizeLinear with zero point 0: integers - 1, zero point -1."""
    from onnx import numpy_helper

    spelled = kept = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in constants:
            continue
        ints = numpy_helper.to_array(constants[node.input[0]])
        zero_point = numpy_helper.to_array(constants[node.input[2]]) if node.input[2] in constants else None
        if ints.dtype != np.int8 or zero_point is None or zero_point.dtype != np.int8 or zero_point.any():
            continue
        if ints.min(initial=0) < -127:  # not a symmetric grid: -128 has no spelling one step lower
            kept += 1
            continue
        node.input[0] = _set(model, constants, node.input[0], (ints.astype(np.int16) - 1).astype(np.int8))
        node.input[2] = _set(model, constants, node.input[2], np.full(zero_point.shape, WEIGHT_ZERO_POINT, np.int8))
        spelled += 1
    return spelled, kept


def _respell_activations(model: Any, constants: dict[str, Any]) -> int:
    """QuantizeLinear (and the DequantizeLinear nodes reading it) at zero point 0/128: scale * 127/128."""
    from onnx import numpy_helper

    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            readers.setdefault(node.input[0], []).append(node)
    spelled = 0
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in constants:
            continue
        if not _is_zero_point_zero(numpy_helper.to_array(constants[node.input[2]])):
            continue
        scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float64)
        new_scale = _set(model, constants, node.input[1], (scale / TOOLKIT_RESCALE).astype(np.float32))
        node.input[1] = new_scale
        for reader in readers.get(node.output[0], []):
            reader.input[1] = new_scale
        spelled += 1
    return spelled


def _drop_unread_constants(model: Any) -> None:
    """Initializers and Constant nodes that nothing reads any more (the respelled tensors' originals)."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unread = [init for init in model.graph.initializer if init.name not in read]
    for init in unread:
        model.graph.initializer.remove(init)
    kept = [node for node in model.graph.node if node.op_type != "Constant" or node.output[0] in read]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def write_toolkit_onnx(source: Path, target: Path) -> dict[str, Any]:
    """Write `source` (a QDQ ONNX) to `target` in the spelling above; what was respelled, for the manifest."""
    import onnx

    model = onnx.load(str(source))
    constants = _constants(model)
    new_constant = functools.partial(_set, model, constants)  # (name, array) -> the initializer's name
    linears = linears_as_gemm(model, constants, new_constant)
    operands = quantize_constant_operands(model, constants, new_constant)
    weights, kept = _respell_weights(model, constants)
    activations = _respell_activations(model, constants)
    readers = dedicate_dequantize_readers(model, set(constants))
    _drop_unread_constants(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return {"linears_as_gemm": linears, "constant_operands_on_int8_grid": operands["count"],
            "constant_operands_largest_move": operands["largest_move"],
            "weight_tensors_zero_point_minus_1": weights, "weight_tensors_kept": kept,
            "activation_scales_times_127_128": activations, "dequantize_copies_one_per_reader": readers}


def write_float_toolkit_onnx(path: Path) -> dict[str, Any]:
    """The float ONNX at `path` rewritten in place with its N-D Linears as MatMul (linears.py); what changed."""
    import onnx

    model = onnx.load(str(path))
    linears = gemm_linears_as_matmul(model)
    if linears:
        _drop_unread_constants(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return {"linears_as_matmul": linears,
            "why": "rknn-toolkit2 loses a Gemm's value info when a Transpose reads its reshaped output: "
                   "converters/rknn/linears.py"}


__all__ = ["TOOLKIT_RESCALE", "WEIGHT_ZERO_POINT", "write_float_toolkit_onnx", "write_toolkit_onnx"]
