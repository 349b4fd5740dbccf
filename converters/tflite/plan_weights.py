"""Write the plan's own integer weights, scales and int32 biases into a quantized .tflite.

ai-edge-quantizer re-derives each weight tensor's per-channel scale from the float weights it is
given (max |w| / 127). For the plan's grid weights that gives the plan's integers back only where a
channel's largest integer is 127. A channel with 7-bit weights (the overflow fix for x86 CPUs
without VNNI, mnv4_deploy/quant/overflow.py), or one whose scale was raised so its int32 bias fits,
would land on the quantizer's finer grid instead: another model than the plan (the trained digits
net's tflite-int8 fell from cosine 0.9999 to 0.9958 against the plan's emulation). So after
quantizing, every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED whose weights are one of the
plan's layers (same shape, values within half of the quantizer's step of the plan's grid weights)
gets the plan's integers and scales, and its bias is re-rounded on input_scale x the plan's weight
scale. A tensor matching no layer is left as the quantizer wrote it, and counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metadata import load_model_object, save_model_object

# TFLite layout of each op's weights -> the plan's (O, I, kH, kW) / (O, I)
_TO_PLAN = {"CONV_2D": (0, 3, 1, 2), "DEPTHWISE_CONV_2D": (3, 0, 1, 2), "FULLY_CONNECTED": (0, 1)}
_FROM_PLAN = {"CONV_2D": (0, 2, 3, 1), "DEPTHWISE_CONV_2D": (1, 2, 3, 0), "FULLY_CONNECTED": (0, 1)}
_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


def op_names(model: Any) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM") for code in model.operatorCodes]


def _tensor_array(model: Any, tensor: Any, dtype: Any) -> np.ndarray:
    data = model.buffers[tensor.buffer].data
    return np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype=dtype).reshape(tensor.shape)


def _set_array(model: Any, tensor: Any, values: np.ndarray) -> None:
    model.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)


def _plan_layers(plan: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Quantized layers of the plan: name -> (integer weights, per-channel scales)."""
    scales = plan.weight_scales
    return {name: (plan.weight_ints(name), scales[name]) for name in scales}


def _match(values: np.ndarray, step: np.ndarray, layers: dict[str, tuple[np.ndarray, np.ndarray]],
           taken: set[str]) -> str | None:
    """The plan layer whose grid weights these dequantized weights are (within half a step of their grid)."""
    best, best_error = None, np.inf
    for name, (ints, scales) in layers.items():
        if name in taken or ints.shape != values.shape:
            continue
        grid = ints.astype(np.float64) * scales.reshape((-1,) + (1,) * (ints.ndim - 1))
        error = np.max(np.abs(grid - values) / step.reshape((-1,) + (1,) * (ints.ndim - 1)))
        if error <= 0.5 + 1e-3 and error < best_error:
            best, best_error = name, error
    return best


def write_plan_weights(path: Path, plan: Any) -> dict[str, Any]:
    """Rewrite `path` in place with the plan's weights; returns counts for the artifact metadata."""
    model, external = load_model_object(path)
    graph = model.subgraphs[0]
    names = op_names(model)
    layers = _plan_layers(plan)
    taken: set[str] = set()
    rewritten = already = unmatched = 0
    for op in graph.operators:
        kind = names[op.opcodeIndex]
        if kind not in _TO_PLAN or len(op.inputs) < 2:
            continue
        x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        q = w.quantization
        if q is None or q.scale is None or w.type != 9:  # 9: INT8
            continue
        if model.buffers[w.buffer].data is None:  # an activation (attention's q.k, attn.v): no weights to write
            continue
        axis = _CHANNEL_AXIS[kind]
        scale = np.asarray(q.scale, np.float64)
        ints = _tensor_array(model, w, np.int8).astype(np.float64)
        shape = [1] * ints.ndim
        shape[axis] = -1
        values = np.transpose(ints * scale.reshape(shape), _TO_PLAN[kind])
        name = _match(values, scale, layers, taken)
        if name is None:
            unmatched += 1
            continue
        taken.add(name)
        plan_ints, plan_scales = layers[name]
        if np.array_equal(np.transpose(plan_ints, _FROM_PLAN[kind]), ints.astype(np.int8)) and \
                np.array_equal(plan_scales.astype(np.float32), np.asarray(q.scale, np.float32)):
            already += 1
            continue
        _set_array(model, w, np.transpose(plan_ints, _FROM_PLAN[kind]).astype(np.int8))
        q.scale = [float(s) for s in plan_scales.astype(np.float32)]
        q.zeroPoint = [0] * len(plan_scales)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            _rewrite_bias(model, graph.tensors[op.inputs[2]], plan.bias_values(name),
                          float(x.quantization.scale[0]), plan_scales)
        rewritten += 1
    if rewritten:
        save_model_object(path, model, external)
    return {"layers_on_plan_weights": rewritten + already, "weights_rewritten": rewritten,
            "weight_tensors_unmatched": unmatched}


def _folded_constants(model: Any, bias: Any, values: np.ndarray) -> np.ndarray:
    """What the converter added to the layer's bias beyond the plan's own, per channel (0 where nothing).

    LiteRT folds a constant that follows a layer into its bias: hard-sigmoid's +3 before a ReLU6
    fused into a FULLY_CONNECTED (Mobile-Former's Dynamic ReLU coefficients). The quantizer's int32
    bias then holds plan bias + that constant; a difference within half its own step is its rounding.
    """
    written = _tensor_array(model, bias, np.int32).astype(np.float64)
    steps = np.asarray(bias.quantization.scale, np.float64)
    difference = written * steps - values.astype(np.float64)
    return np.where(np.abs(difference) <= 0.5 * steps * (1 + 1e-6), 0.0, difference)


def _rewrite_bias(model: Any, bias: Any, values: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> None:
    """int32 bias on input_scale x weight_scale, as the plan's int32 bias is rounded (plus any constant the
    converter folded into it)."""
    values = values.astype(np.float64) + _folded_constants(model, bias, values)
    scales = (np.float32(input_scale) * weight_scales.astype(np.float32)).astype(np.float32)
    ints = np.clip(np.round(values.astype(np.float32) / scales), -(2 ** 31 - 1), 2 ** 31 - 1).astype(np.int32)
    _set_array(model, bias, ints)
    bias.quantization.scale = [float(s) for s in scales]
    bias.quantization.zeroPoint = [0] * len(scales)
