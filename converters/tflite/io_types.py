"""Set the I/O tensor type of a full-integer .tflite: float32, int8 or uint8.

ai-edge-quantizer writes full-integer models with int8 I/O. Apps that feed float tensors want
float32 I/O (a QUANTIZE op at the input, a DEQUANTIZE at the output, as TensorFlow's converter
writes them); the EdgeTPU's classic examples feed uint8 pixels (QUANTIZE uint8 -> int8 at the
input, int8 -> uint8 at the output: a requantization, which the EdgeTPU maps). The interior of
the model is never touched: only boundary conversion ops are stripped and added, so any of the
three forms can be turned into any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.options import TargetOption

from .metadata import load_model_object, save_model_object

IO_DTYPES = ("float32", "int8", "uint8")
IO_DTYPE = TargetOption("io_dtype", str, "float32", "full-integer input/output type, float32, int8 or uint8",
                        panel="TFLite", choices=IO_DTYPES)
_INTEGER_IO = ("int8", "uint8")


def check_io_dtype(io_dtype: str, allowed: tuple[str, ...] = IO_DTYPES, target: str = "tflite-int8") -> None:
    if io_dtype not in allowed:
        raise UsageError(f"--io-dtype {io_dtype} is not supported by target {target}",
                         f"use one of: {', '.join(allowed)}")


def set_io_dtype(path: Path, io_dtype: str) -> None:
    """Rewrite `path` in place so its single input and output have type `io_dtype`."""
    from ai_edge_litert import schema_py_generated as schema

    check_io_dtype(io_dtype)
    model, external = load_model_object(path)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise DeployError(f"{path.name}: expected one input and one output, got {len(graph.inputs)} and "
                          f"{len(graph.outputs)}")
    old_in, old_out = int(graph.inputs[0]), int(graph.outputs[0])
    new_in, new_out = _strip_input(graph), _strip_output(graph)
    for index in (new_in, new_out):
        if graph.tensors[index].type != schema.TensorType.INT8:
            kind = _type_name(graph.tensors[index].type)
            raise UsageError(f"{path.name}: the model is not full-integer inside (boundary tensor is {kind})",
                             "quantize every op to int8 first")
    if io_dtype != "int8":
        new_in = _add_input_conversion(model, graph, new_in, io_dtype)
        new_out = _add_output_conversion(model, graph, new_out, io_dtype)
    graph.inputs, graph.outputs = [new_in], [new_out]
    _rename_boundary(graph, old_in, new_in)
    _rename_boundary(graph, old_out, new_out)
    for signature in model.signatureDefs or []:
        for entry in signature.inputs or []:
            entry.tensorIndex = new_in if entry.tensorIndex == old_in else entry.tensorIndex
        for entry in signature.outputs or []:
            entry.tensorIndex = new_out if entry.tensorIndex == old_out else entry.tensorIndex
    save_model_object(path, model, external)


def _type_name(code: int) -> str:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}.get(code, str(code))


def _opcode(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _strip_input(graph: Any) -> int:
    """Drop a boundary QUANTIZE (float32/uint8 -> int8) after the graph input; return the int8 input."""
    from ai_edge_litert import schema_py_generated as schema

    index = int(graph.inputs[0])
    consumers = [op for op in graph.operators if index in list(op.inputs)]
    if graph.tensors[index].type == schema.TensorType.INT8 or len(consumers) != 1:
        return index
    op = consumers[0]
    out = int(op.outputs[0])
    if graph.tensors[out].type != schema.TensorType.INT8 or len(op.inputs) != 1:
        return index
    graph.operators.remove(op)
    return out


def _strip_output(graph: Any) -> int:
    """Drop a boundary DEQUANTIZE/QUANTIZE (int8 -> float32/uint8) before the graph output."""
    from ai_edge_litert import schema_py_generated as schema

    index = int(graph.outputs[0])
    producers = [op for op in graph.operators if index in list(op.outputs)]
    if graph.tensors[index].type == schema.TensorType.INT8 or len(producers) != 1:
        return index
    op = producers[0]
    source = int(op.inputs[0])
    if graph.tensors[source].type != schema.TensorType.INT8 or len(op.inputs) != 1:
        return index
    graph.operators.remove(op)
    return source


def _rename_boundary(graph: Any, old: int, new: int) -> None:
    """The graph-level name (serving_default_args_0, ...) stays on the I/O tensor."""
    if old != new:
        graph.tensors[new].name, graph.tensors[old].name = graph.tensors[old].name, graph.tensors[old].name + b"_unused"


def _boundary_tensor(graph: Any, like: Any, io_dtype: str) -> int:
    from ai_edge_litert import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature, tensor.buffer = list(like.shape), like.shapeSignature, 0
    tensor.name = (like.name or b"io") + b"_" + io_dtype.encode()
    tensor.type = schema.TensorType.FLOAT32 if io_dtype == "float32" else schema.TensorType.UINT8
    if io_dtype == "uint8":  # the same grid shifted into the unsigned container
        q = schema.QuantizationParametersT()
        q.scale = [float(s) for s in like.quantization.scale]
        q.zeroPoint = [int(z) + 128 for z in like.quantization.zeroPoint]
        q.quantizedDimension = 0
        tensor.quantization = q
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def conversion_op(model: Any, builtin: int, inputs: list[int], outputs: list[int]) -> Any:
    """A QUANTIZE or DEQUANTIZE operator (its opcode added to the model when missing)."""
    from ai_edge_litert import schema_py_generated as schema

    codes = model.operatorCodes
    found = [i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin]
    if found:
        index = found[0]
        codes[index].version = max(codes[index].version, 2)
    else:
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
        codes.append(code)
        index = len(codes) - 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = index, inputs, outputs
    if builtin == schema.BuiltinOperator.QUANTIZE:
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()
    else:
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.DequantizeOptions, schema.DequantizeOptionsT()
    return op


def _add_input_conversion(model: Any, graph: Any, int8_input: int, io_dtype: str) -> int:
    from ai_edge_litert import schema_py_generated as schema

    outer = _boundary_tensor(graph, graph.tensors[int8_input], io_dtype)
    graph.operators.insert(0, conversion_op(model, schema.BuiltinOperator.QUANTIZE, [outer], [int8_input]))
    return outer


def _add_output_conversion(model: Any, graph: Any, int8_output: int, io_dtype: str) -> int:
    from ai_edge_litert import schema_py_generated as schema

    outer = _boundary_tensor(graph, graph.tensors[int8_output], io_dtype)
    builtin = schema.BuiltinOperator.DEQUANTIZE if io_dtype == "float32" else schema.BuiltinOperator.QUANTIZE
    graph.operators.append(conversion_op(model, builtin, [int8_output], [outer]))
    return outer


def io_dtype_of(path: Path) -> str:
    """'float32', 'int8' or 'uint8': the type of the model's input tensor."""
    model, _ = load_model_object(path)
    return _type_name(model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].type).lower()


__all__ = ["IO_DTYPES", "check_io_dtype", "conversion_op", "set_io_dtype", "io_dtype_of"]
