"""Full-integer TFLite that expresses the run's quantization plan (ai-edge-quantizer route).

Steps, and why each:
1. convert the plan's adjusted float model (`QuantPlan.model`: grid weights, corrected biases)
   with litert-torch, strict export (clean int8 residual ADDs later);
2. match its tensors to the plan's points (plan_ranges.py) and hand the quantizer the plan's
   ranges as its calibration result: `recipe.static_wi8_ai8()` then writes per-channel int8
   weights and int8 activations on the plan's grids; only tensors the plan has no point for
   keep the quantizer's own min/max, over up to QUANTIZER_IMAGES calibration images (such a
   tensor can carry real signal: a Linear's output before the bias the converter folded into a
   following constant ADD; on 16 images its range clipped half the values of one held-out photo). Its weights are re-derived
   from the grid weights (max |w| / 127), which misses the plan's 7-bit channels, so the plan's
   own integers, scales and int32 biases are written over them (plan_weights.py), and values the
   converter folded into constants (token-only paths) go on their points' grids (plan_constants.py);
3. refuse a model that still computes anything in float, naming the op (GELU and friends stay
   float in ai-edge-quantizer); then, where asked (tflite-int8), compute the softmaxes the plan
   gives a calibrated grid in float between DEQUANTIZE/QUANTIZE (softmax_islands.py), and set
   the I/O type (io_types.py).
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.errors import DeployError, UsageError

from .convert import export_float_tflite
from .flatbuffer import read_tflite
from .io_types import set_io_dtype
from .plan_constants import write_plan_constants
from .plan_weights import write_plan_weights
from .softmax_islands import float_softmax_islands
from .plan_ranges import calibration_result, capture_point_values, float_tensor_values, grid_agreement, match_tensors

QUANTIZER_IMAGES = 256  # calibration images the quantizer reads (min/max) for tensors the plan has no point for
QUANTIZATION = ("ai_edge_quantizer recipe.static_wi8_ai8 (per-channel int8 weights, int8 activations) with "
                "the plan's activation ranges as its calibration result")


def check_plan_full_integer(plan: Any, target: str) -> None:
    """A plan that keeps layers in float (accuracy fallback) cannot become a full-integer model."""
    if plan.float_layers:
        shown = ", ".join(plan.float_layers[:4]) + (" ..." if len(plan.float_layers) > 4 else "")
        raise UsageError(f"target {target} is full-integer, but the run's plan keeps {len(plan.float_layers)} "
                         f"unit(s) in float ({shown})",
                         "raise --max-drop or drop --eval-data/--max-drop for this target; onnx-int8 can keep them")


def _signature(path: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    key, io_names = next(iter(Interpreter(model_path=str(path)).get_signature_list().items()))
    return key, io_names["inputs"][0]


def _quantizer_calibration(float_path: Path, recipe: Any, calib: np.ndarray, layout: str) -> dict[str, Any]:
    from ai_edge_quantizer import quantizer

    key, name = _signature(float_path)
    images = calib[:QUANTIZER_IMAGES]
    samples = [{name: np.ascontiguousarray(x[None].transpose(0, 2, 3, 1) if layout == "nhwc" else x[None])}
               for x in images]
    q = quantizer.Quantizer(float_path.read_bytes(), recipe)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return q.calibrate({key: samples}, num_threads=2)


def float_ops(path: Path) -> list[str]:
    """Ops that compute in float, other than the float I/O conversions at the boundary."""
    graph = read_tflite(path)
    found = []
    for op in graph.ops:
        boundary = (op.op == "QUANTIZE" and op.inputs[0].index in graph.input_indices) or (
            op.op == "DEQUANTIZE" and all(t.index in graph.output_indices for t in op.outputs))
        floats = [t for t in (*op.inputs, *op.outputs) if not t.is_constant and t.dtype in ("FLOAT32", "FLOAT16")]
        if floats and not boundary:
            found.append(f"#{op.index} {op.op} ({floats[0].name.split('/')[-1][-60:]} is {floats[0].dtype})")
    return found


def build_full_integer(plan: Any, calib: np.ndarray, example: Any, path: Path, layout: str, io_dtype: str,
                       log: Callable[[str], None] = print, target: str = "tflite-int8",
                       float_softmax: bool = False) -> dict[str, Any]:
    """Write the full-integer .tflite of `plan` to `path`; return facts for the artifact metadata.

    With `float_softmax`, the plan's calibrated-grid softmaxes run in float (the only float ops;
    listed under "float_softmax"); without it the plan must have none (see
    QuantPlan.with_fixed_softmax_grids)."""
    from ai_edge_quantizer import quantizer, recipe

    started = time.perf_counter()
    torch_values = capture_point_values(plan, calib[:1])  # before litert work slows PyTorch down
    float_path = path.with_name(path.stem + ".plan-float.tflite")
    facts = export_float_tflite(plan.model, example, float_path, layout, target)
    match = match_tensors(float_tensor_values(float_path, calib[:1], layout), torch_values)
    static = recipe.static_wi8_ai8()
    ranges = plan.activation_ranges
    calibration = calibration_result(match, ranges, _quantizer_calibration(float_path, static, calib, layout))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = quantizer.Quantizer(float_path.read_bytes(), static).quantize(calibration)
    if result.quantized_model is None:
        raise DeployError("ai-edge-quantizer returned no model for the static int8 recipe")
    path.write_bytes(bytes(result.quantized_model))
    weights = write_plan_weights(path, plan)
    weights.update(write_plan_constants(path, torch_values, ranges))
    left = float_ops(path)
    if left:
        raise UsageError(f"cannot make the model full-integer: {len(left)} op(s) stay float, first {left[0]}",
                         "replace the op (e.g. GELU by ReLU) or use tflite-dynamic / onnx-int8")
    islands = float_softmax_islands(path, plan, match) if float_softmax else []
    if plan.calibrated_softmax_grids and len(islands) != len(plan.calibrated_softmax_grids):
        raise DeployError(f"{target}: {len(plan.calibrated_softmax_grids)} softmax(es) need the plan's calibrated "
                          f"grid but {len(islands)} SOFTMAX op(s) of the converted model carry them")
    grids = grid_agreement(path, match, ranges)
    set_io_dtype(path, io_dtype)
    log(f"full-integer tflite: {len(match.points)} tensors on the plan's ranges, "
        f"{len(match.unmatched_tensors)} calibrated by the quantizer, {grids['tensors_off_plan_grid']} off-grid")
    return {"route": f"{facts['route']} of the plan's adjusted float model -> ai_edge_quantizer static int8",
            "quantization": QUANTIZATION, "io_dtype": io_dtype,
            "plan_ranges": {**match.summary(), **grids, "quantizer_images": min(len(calib), QUANTIZER_IMAGES)},
            "plan_weights": weights, "float_softmax": islands,
            "seconds_full_integer": round(time.perf_counter() - started, 3)}
