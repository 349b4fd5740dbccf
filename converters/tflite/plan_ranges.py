"""Which TFLite tensor carries which of our plan's quantization points, and its min/max.

ai-edge-quantizer takes activation ranges as a calibration result keyed by TFLite tensor name.
To make it express OUR plan (not recompute ranges), every float tensor of the converted plan
model is matched to the plan point whose PyTorch value it holds: both models run on the same
calibration image and a tensor matches the point with the same values (up to layout: NCHW
activations become NHWC inside TFLite; other tensors keep their shape, are reshaped, or have
their last two dims swapped where the converter moved a transpose). The
matched tensors get the plan grid's exact [lo, hi], which the quantizer's MIN_MAX algorithm
turns back into the very same scale and zero point. Tensors with no plan point (explicit PAD
before a stride-2 conv, ...) keep the quantizer's own calibration; the facts say how many.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MATCH_RTOL = 1e-3  # max abs difference / max abs value for "the same tensor"


@dataclass
class TensorMatch:
    """Plan point per TFLite tensor name, and what stayed unmatched on either side."""

    points: dict[str, str] = field(default_factory=dict)  # tflite tensor name -> plan point
    errors: dict[str, float] = field(default_factory=dict)
    unmatched_points: list[str] = field(default_factory=list)
    unmatched_tensors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"matched_tensors": len(self.points), "plan_points_without_tensor": self.unmatched_points,
                "tensors_calibrated_by_quantizer": len(self.unmatched_tensors),
                "max_match_error": max(self.errors.values(), default=0.0)}


def capture_point_values(plan: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """The plan's float (adjusted) model on one image: the value at every enabled point."""
    import torch

    model = plan.model
    values: dict[str, np.ndarray] = {}
    hooks = [model.get_submodule(plan.point_module(p)).register_forward_hook(
        lambda _m, _i, out, p=p: values.__setitem__(p, out.detach().numpy().copy()))
        for p in plan.activation_ranges]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(image[:1], dtype=np.float32)))
    finally:
        for hook in hooks:
            hook.remove()
    return values


def float_tensor_values(path: Path, image: np.ndarray, layout: str) -> dict[str, np.ndarray]:
    """Every non-constant float32 tensor of a float .tflite after one inference."""
    from ai_edge_litert.interpreter import Interpreter

    from .metadata import load_model_object

    model, _ = load_model_object(path)
    graph = model.subgraphs[0]
    constant = {t.name.decode() for t in graph.tensors if t.buffer and model.buffers[t.buffer].data is not None
                or (t.buffer and model.buffers[t.buffer].offset > 1)}
    with warnings.catch_warnings():  # "intended for debugging": reading every tensor once is the point here
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = np.ascontiguousarray(image[:1], dtype=np.float32)
    interpreter.set_tensor(detail["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "nhwc" else x)
    interpreter.invoke()
    values = {}
    for d in interpreter.get_tensor_details():
        if d["name"] in constant or np.dtype(d["dtype"]) != np.float32:
            continue
        try:
            values[d["name"]] = interpreter.get_tensor(d["index"]).copy()
        except ValueError:  # tensors without data (never written)
            continue
    return values


def candidate_layouts(value: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """A PyTorch value in the layouts a TFLite tensor of `shape` may hold it in."""
    out = []
    if value.ndim == 4:
        out.append(value.transpose(0, 2, 3, 1))
    out.append(value)
    if value.ndim >= 3:  # the converter moved a transpose of the last two dims past it (matmul_order.py)
        out.append(np.swapaxes(value, -1, -2))
    return [c if c.shape == shape else c.reshape(shape) for c in out if c.size == int(np.prod(shape))]


def match_tensors(tflite: dict[str, np.ndarray], torch_values: dict[str, np.ndarray]) -> TensorMatch:
    """Match each TFLite tensor to the plan point holding the same values (first point wins ties)."""
    result = TensorMatch()
    for name, value in tflite.items():
        best: tuple[str, float] | None = None
        scale = float(np.abs(value).max()) + 1e-6
        for point, candidate_value in torch_values.items():
            for candidate in candidate_layouts(candidate_value, value.shape):
                err = float(np.abs(candidate - value).max()) / scale
                if err < MATCH_RTOL and (best is None or err < best[1]):
                    best = (point, err)
        if best is None:
            result.unmatched_tensors.append(name)
        else:
            result.points[name], result.errors[name] = best
    used = set(result.points.values())
    result.unmatched_points = [p for p in torch_values if p not in used]
    return result


def calibration_result(match: TensorMatch, ranges: dict[str, Any], fallback: dict[str, Any]) -> dict[str, Any]:
    """The quantizer's calibration dict: the plan's [lo, hi] where matched, its own elsewhere."""
    result = dict(fallback)
    for name, point in match.points.items():
        q = ranges[point]
        shape = np.shape(fallback[name]["min"]) if name in fallback else ()
        result[name] = {"min": np.full(shape, q.lo, np.float32), "max": np.full(shape, q.hi, np.float32)}
    return result


def grid_agreement(path: Path, match: TensorMatch, ranges: dict[str, Any]) -> dict[str, Any]:
    """How many matched tensors carry exactly the plan's grid in the written model."""
    from .metadata import load_model_object

    model, _ = load_model_object(path)
    by_name = {t.name.decode(): t for t in model.subgraphs[0].tensors}
    same, differ = 0, {}
    for name, point in match.points.items():
        t = by_name.get(name)
        if t is None or t.quantization is None or t.quantization.scale is None:
            continue
        q = ranges[point].as_dtype("int8")
        scale, zp = float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])
        if abs(scale - q.scale) <= 1e-6 * q.scale and zp == q.zero_point:
            same += 1
        else:
            differ[point] = {"plan": [q.scale, q.zero_point], "tflite": [scale, zp]}
    return {"tensors_on_plan_grid": same, "tensors_off_plan_grid": len(differ), "off_plan_grid": differ}
