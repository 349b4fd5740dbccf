"""Which compute unit Core ML would pick per op family, and what the Neural Engine runs badly.

`compute_unit_report`: on macOS, coremltools' `MLComputePlan` (Core ML's own compute plan of
the compiled model, macOS 14.4+) gives each op's preferred device and estimated cost; they are
summed per op family. Elsewhere the report says why it is unavailable: the plan comes from
the Core ML framework, which coremltools reaches through its native extension
(`libcoremlpython`), built for macOS only. Apple publishes no static list of which ops run on
the Neural Engine; it depends on device, OS and tensor shapes (coremltools#1780), so the
plan (or Xcode's performance report) on the device is the only authority.

`neural_engine_notes`: known limits, chosen by the op families a program holds, for the
report and the package metadata. Sources (cited in README.md):
- Apple ML Research, "Deploying Transformers on the Apple Neural Engine" (2022): the ANE
  prefers 4-D channels-first (B, C, 1, S) tensors; reshapes/transposes cost memory copies;
  large attention tensors should be split per head.
- coremltools guide "Typed Execution": the Neural Engine computes in fp16; fp32-typed models
  run on GPU/CPU.
- Apple Developer Forums thread 724930 (Apple engineer): with range-flexible input shapes only
  the default shape runs on the Neural Engine; enumerated shapes can each run there.
- coremltools guide "Quantization performance" (opt-quantization-perf): activation
  quantization pays off only when the model runs (mostly) on the Neural Engine; A17 Pro / M4
  add int8-int8 throughput; CPU/GPU may be slower with quantized activations.
- coremltools#2687, #2690: exp-based ops (softplus, logsumexp) overflow fp16 on the Neural
  Engine for moderate inputs (no max-shift inside the kernel).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

UNAVAILABLE_OFF_MAC = ("Core ML's compute plan (MLComputePlan) comes from the Core ML framework through "
                       "coremltools' native extension, which exists only on macOS (14.4+); run "
                       "`mnv4-deploy validate` on a Mac, or Xcode's Performance report on the device")
_DEVICES = {"MLCPUComputeDevice": "CPU", "MLGPUComputeDevice": "GPU", "MLNeuralEngineComputeDevice": "NeuralEngine"}

ATTENTION_NOTE = (
    "attention (matmul of two activations + softmax, with reshape/transpose around it): the Neural Engine "
    "computes in fp16 and prefers 4-D channels-first (B, C, 1, S) tensors; reshapes and transposes cost "
    "memory copies, and large attention tensors should be split per head (Apple ML Research, 'Deploying "
    "Transformers on the Apple Neural Engine'). Core ML may place these ops on the GPU/CPU, which splits "
    "the model into segments with transfers between them. Shapes are static here (range-flexible shapes "
    "would run on the Neural Engine only at their default shape).")
GELU_NOTE = (
    "GELU: the Neural Engine computes in fp16 only, and exp/erf-style activations have shown fp16 overflow "
    "cliffs on it (coremltools#2687, #2690 for softplus/logsumexp); no Apple document lists GELU's placement "
    "per chip. Check the compute plan on the device and compare Neural Engine outputs with CPU_ONLY.")
W8A8_NOTE = (
    "W8A8: int8 activations pay off only when the model runs (mostly) on the Neural Engine; A17 Pro / M4 "
    "and newer add int8-int8 throughput there, while CPU/GPU may run it slower than W8 (coremltools guide, "
    "quantization performance).")


def neural_engine_notes(op_histogram: dict[str, int]) -> list[str]:
    """Known Neural Engine limits that apply to a program with these op families."""
    ops = set(op_histogram)
    notes = []
    if {"matmul", "softmax"} <= ops:
        notes.append(ATTENTION_NOTE)
    if "gelu" in ops:
        notes.append(GELU_NOTE)
    if "quantize" in ops:
        notes.append(W8A8_NOTE)
    return notes


def _family(operator_name: str) -> str:
    """'ios17.conv' -> 'conv'."""
    return operator_name.rsplit(".", 1)[-1]


def _device(usage: Any) -> str:
    if usage is None:
        return "unknown"
    return _DEVICES.get(type(usage.preferred_compute_device).__name__, type(usage.preferred_compute_device).__name__)


def compute_plan_summary(plan: Any) -> dict[str, Any]:
    """Per op family: op count, preferred device counts and share of the estimated cost."""
    function = plan.model_structure.program.functions["main"]
    families: dict[str, dict[str, Any]] = {}
    by_device: dict[str, float] = {}
    for op in function.block.operations:
        family = _family(op.operator_name)
        if family == "const":
            continue
        device = _device(plan.get_compute_device_usage_for_mlprogram_operation(op))
        cost = plan.get_estimated_cost_for_mlprogram_operation(op)
        weight = float(cost.weight) if cost is not None else 0.0
        entry = families.setdefault(family, {"ops": 0, "preferred": {}, "cost_share": 0.0})
        entry["ops"] += 1
        entry["preferred"][device] = entry["preferred"].get(device, 0) + 1
        entry["cost_share"] += weight
        by_device[device] = by_device.get(device, 0.0) + weight
    for entry in families.values():
        entry["cost_share"] = round(entry["cost_share"], 4)
    return {"per_op_family": dict(sorted(families.items())),
            "cost_share_by_device": {k: round(v, 4) for k, v in sorted(by_device.items())}}


def compute_unit_report(path: Path) -> dict[str, Any]:
    """The preferred compute device per op family (macOS), or why that is unavailable here."""
    if sys.platform != "darwin":
        return {"available": False, "reason": UNAVAILABLE_OFF_MAC}
    from .convert import coremltools

    ct = coremltools()
    try:
        from coremltools.models.compute_plan import MLComputePlan

        compiled = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL).get_compiled_model_path()
        plan = MLComputePlan.load_from_path(compiled, compute_units=ct.ComputeUnit.ALL)
        return {"available": True, "compute_units": "ALL", "source": "coremltools MLComputePlan",
                **compute_plan_summary(plan)}
    except Exception as exc:  # an older macOS, or a plan Core ML cannot make
        text = " ".join(str(exc).split())[:200]
        return {"available": False, "reason": f"MLComputePlan failed here ({type(exc).__name__}: {text}); "
                                              "it needs macOS 14.4+"}
