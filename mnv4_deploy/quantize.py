"""The int8 stage of a run: one quantization plan, shared by every int8 target.

The plan is built once from the run's calibration tensors. With `--max-drop` and labeled
data, the accuracy-aware fallback keeps the most sensitive layers in float (ranked by the
sensitivity report) until the plan's own int8 simulation meets the budget; converters then
express that plan natively, so all int8 targets of a run agree. Converters get the plan itself
(`ConvertJob.plan`, a `QuantPlan`); the summary stays with the pipeline's report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .batches import run_chunked

if TYPE_CHECKING:
    from .quant.plan import QuantPlan

Log = Callable[[str], None]
SENSITIVITY_IMAGES = 32  # calibration images the sensitivity ranking runs on


@dataclass
class PlanStage:
    """The run's plan (what converters get) plus what the report says about it."""

    plan: "QuantPlan"
    summary: dict[str, Any] = field(default_factory=dict)


def overflow_fix_mode(requested: str | None, converters: Sequence[Any]) -> str:
    """The plan's overflow fix: the one asked for, else `auto` when a target runs x86 int8 kernels, else `off`.

    The fix costs a little weight resolution in GEMM-run layers (7-bit channels), so it is on by
    default only where a target's runtime needs it (`TargetInfo.x86_int8_kernels`).
    """
    if requested is not None:
        return requested
    x86 = any(c.info.x86_int8_kernels and c.info.needs_calibration and c.info.shared_plan for c in converters)
    return "auto" if x86 else "off"


def build_plan_stage(canonical: Any, calibration: Any, recipe: Any, evaluation: Any = None,
                     max_drop: float | None = None, log: Log = print, sensitivity_images: int = 0,
                     overflow_fix: str = "off") -> PlanStage:
    """Build the plan; when a drop budget and labeled data are given, fall back until it holds.

    `sensitivity_images` > 0 ranks layers (on that many calibration images) even when no
    fallback runs, so reports can show which layers int8 hurts most. `overflow_fix`: see
    `overflow_fix_mode`.
    """
    from .quant import accuracy_fallback, build_plan, layer_sensitivity
    from .validate import accuracy

    started = time.perf_counter()
    streamed = hasattr(calibration, "batches")  # calibration_stream.StreamedCalibration: read from disk in batches
    plan = build_plan(canonical, calibration if streamed else calibration.tensors, recipe, log=log,
                      overflow_fix=overflow_fix)
    summary: dict[str, Any] = {"calibration_sha256": calibration.sha256, "calibration_images": len(calibration),
                               "recipe": recipe.name}
    if evaluation is not None and max_drop is not None:
        def measure(candidate: Any) -> float:
            logits = run_chunked(candidate.emulation(), evaluation.batch.tensors)
            return accuracy(evaluation.reference_logits, logits, evaluation.batch.labels).drop_top1

        drop = measure(plan)
        summary["simulated_drop_top1"] = round(drop, 4)
        if drop > max_drop:
            subset = calibration.tensors[:SENSITIVITY_IMAGES]
            ranking = layer_sensitivity(plan, subset, log=log)
            summary["sensitivity"] = [s.to_dict() for s in ranking[:20]]
            fallback = accuracy_fallback(plan, measure, max_drop, max_layers=recipe.section("fallback").get("max_layers"),
                                         ranking=ranking, log=log)
            plan = fallback.plan
            summary["fallback"] = fallback.to_dict()
            log(f"int8 fallback: kept {len(fallback.kept_float)} layers in float "
                f"({', '.join(fallback.kept_float) or 'none'}) for a drop budget of {max_drop} pt")
    if sensitivity_images > 0 and "sensitivity" not in summary:
        from .quant.threads import single_thread

        ranked_at = time.perf_counter()
        with single_thread():  # many small fake-quant ops: a 2-thread pool on a busy host was 20-100x slower
            ranking = layer_sensitivity(plan, calibration.tensors[:sensitivity_images], log=log)
        summary["sensitivity"] = [s.to_dict() for s in ranking[:20]]
        summary["sensitivity_images"] = min(sensitivity_images, len(calibration))
        summary["sensitivity_seconds"] = round(time.perf_counter() - ranked_at, 2)
    summary["plan"] = plan.to_dict()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return PlanStage(plan, summary)
