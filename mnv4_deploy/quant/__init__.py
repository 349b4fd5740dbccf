"""Backend-independent INT8 post-training quantization, and its QDQ ONNX emitter.

    plan = build_plan(canonical_model, calib_images, load_recipe("default"))
    plan.fake_quant_model()      # what the int8 artifact computes, in torch
    ranking = layer_sensitivity(plan, calib_images)
    result = accuracy_fallback(plan, measure=my_drop, max_drop=0.3, ranking=ranking)
    export_qdq_onnx(result.plan, "model_int8.onnx", example)

Modules, one job each: qparams (grid arithmetic), observers (range estimators), weights
(per-channel + AdaRound), equalize (CLE + bias absorption), bias_correction, graph
(quantizer placement), modules (fake-quant layers), simulate (float/int8 side by side),
calibrate, settings (recipe -> limits), plan, sensitivity, fallback, onnx_qdq, decomposed (the
plan's arithmetic as PyTorch's quantized_decomposed ops, for exporters reading torch.export).
The ONNX emitter is imported lazily (it needs onnx): `from mnv4_deploy.quant.onnx_qdq import ...`.
"""
from __future__ import annotations

from typing import Any

from .fallback import FallbackResult, FallbackStep, accuracy_fallback
from .observers import ESTIMATORS, RangeObserver, entropy_threshold, estimate_range, mse_range, percentile_range
from .plan import QuantPlan, build_plan
from .qparams import QParams, qparams_for_range
from .sensitivity import Sensitivity, layer_sensitivity, output_sqnr
from .settings import QuantSettings

__all__ = [
    "ESTIMATORS", "FallbackResult", "FallbackStep", "QParams", "QuantPlan", "QuantSettings", "RangeObserver",
    "Sensitivity", "accuracy_fallback", "build_plan", "entropy_threshold", "estimate_range", "export_qdq_onnx",
    "layer_sensitivity", "mse_range", "output_sqnr", "percentile_range", "qparams_for_range",
]


def __getattr__(name: str) -> Any:
    if name == "export_qdq_onnx":  # keeps `import mnv4_deploy.quant` free of onnx
        from .onnx_qdq import export_qdq_onnx

        return export_qdq_onnx
    raise AttributeError(name)
