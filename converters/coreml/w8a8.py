"""`coreml-int8` (W8A8): the run's int8 plan written into an ML Program, number for number.

coremltools' own activation calibration (`linear_quantize_activations`) runs predictions, so
it needs macOS, and it would choose its own ranges. Instead the plan's fake-quant model is
exported with its quantizers swapped for PyTorch's `quantized_decomposed` ops carrying the
plan's constants, which coremltools' torch.export frontend maps one for one onto MIL:

- every enabled activation point: quantize_per_tensor -> dequantize_per_tensor with the
  plan's scale, zero point and container (uint8/int8) -> MIL `quantize`/`dequantize` (iOS17+);
- every quantized layer: the plan's integer weights (int8) and per-output-channel scales
  through dequantize_per_channel -> `constexpr_affine_dequantize` (iOS17) or
  `constexpr_blockwise_shift_scale` (iOS18+);
- biases: the plan's int32 bias times its scale, as a float constant (Core ML has no int32 bias).

Units the plan keeps float (accuracy fallback) stay float. With fp32 compute the program is
the plan's fake-quant model to float rounding (a test checks it); the target uses fp16
compute, which is what the Neural Engine runs, so values between the quantizers and the
scales themselves are rounded to fp16 (a scale moves by at most 2^-11 of itself).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnv4_deploy.errors import DeployError, UsageError

if TYPE_CHECKING:
    from torch import fx

    from mnv4_deploy.quant import QuantPlan

WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
_WEIGHT_INPUTS = {"constexpr_affine_dequantize": ("quantized_data", "scale"),
                  "constexpr_blockwise_shift_scale": ("data", "scale")}


def plan_module(plan: "QuantPlan") -> "fx.GraphModule":
    """The plan's fake-quant model (a copy) with Core ML-exportable quantizers and constant weights.

    Frozen weights (`QuantWeighted.freeze`) keep the per-forward int32 bias rounding and dtype
    casts out of the export, which halves coremltools' conversion time.
    """
    from mnv4_deploy.quant.decomposed import DecomposedQDQOps

    if plan.settings.act_bits != 8:
        raise UsageError(f"Core ML quantizes activations to 8 bits; this plan uses {plan.settings.act_bits}-bit",
                         "use a recipe with activations.bits: 8 for coreml-int8")
    return plan.export_model(DecomposedQDQOps())


def convert_plan(plan: "QuantPlan", example: Any, contract: Any, *, min_target: str, image_input: bool,
                 fp16: bool = True) -> tuple[Any, dict[str, Any]]:
    """The W8A8 ML Program of `plan` (an MLModel, not saved) and facts for the metadata."""
    from .convert import convert_float

    model = plan_module(plan)
    # image input: the contract's per-channel factors go in front as a multiply, never into
    # the first convolution's integer weights
    mlmodel, facts = convert_float(model, example, contract, fp16=fp16, min_target=min_target,
                                   image_input=image_input, fold_ratios=False)
    facts["route"] = ("plan fake-quant model with quantized_decomposed ops -> torch.export -> "
                      "coremltools.convert(mlprogram)")
    facts["activation_quantization"] = {
        "source": "the run's quantization plan (mnv4_deploy.quant), not coremltools' calibration",
        "plan_points": len(plan.activation_ranges), "bits": 8,
        "dtypes": sorted({q.dtype for q in plan.activation_ranges.values()}),
        "float_units": list(plan.float_layers)}
    return mlmodel, facts


def verify_plan_weights(path: Path, plan: Any) -> dict[str, Any]:
    """Check the saved program holds every quantized layer's int8 weights exactly; count its quantizers.

    Reads the package back with the reference executor's loader (independent of the export).
    """
    from mnv4_deploy.converters.coreml_mil import OP_TABLE
    from mnv4_deploy.converters.coreml_mil.loader import load_program

    program = load_program(path, set(OP_TABLE))
    stored: dict[tuple, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    for node in program.nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in _WEIGHT_INPUTS:
            data_name, scale_name = _WEIGHT_INPUTS[node.op_type]
            data = np.asarray(program.consts[node.inputs[data_name]])
            scale = np.asarray(program.consts[node.inputs[scale_name]], np.float64).ravel()
            stored.setdefault((data.dtype.str, data.shape, data.tobytes()), []).append(scale)
    scales = plan.weight_scales
    missing, worst = [], 0.0
    for layer, scale in scales.items():
        ints = plan.weight_ints(layer).astype(np.int8)
        found = stored.get((ints.dtype.str, ints.shape, ints.tobytes()))
        if not found:
            missing.append(layer)
            continue
        errors = [float(np.max(np.abs(s - scale) / scale)) for s in found if s.size == scale.size]
        worst = max(worst, min(errors, default=float("inf")))
    if missing:
        raise DeployError(f"coreml-int8: the program lost the plan's integer weights of {len(missing)} layer(s) "
                          f"({', '.join(missing[:3])})", "report this with the coremltools version; use onnx-int8")
    return {"plan_weights_exact": True, "quantized_layers": len(scales),
            "weight_ops": {op: counts[op] for op in WEIGHT_OPS if op in counts},
            "quantize_ops": counts.get("quantize", 0), "dequantize_ops": counts.get("dequantize", 0),
            "weight_scale_max_rel_rounding": worst}
