"""ExecuTorch targets: `executorch` (fp32) and `executorch-int8`, XNNPACK-delegated `.pte` programs.

ExecuTorch is PyTorch's own on-device runtime; XNNPACK is its CPU backend on Android, iOS, Linux
and embedded Arm/x86. Both targets lower with ExecuTorch's documented XNNPACK flow (lower.py)
and run here in `executorch.runtime`, the Python bindings of the same C++ runtime.

- `executorch`: the canonical model, fp32.
- `executorch-int8`: the run's int8 plan expressed as PT2E-style quantize/dequantize ops carrying
  the plan's scales and zero points (plan_module.py), which XNNPACK lowers to its QS8 kernels:
  per-channel int8 weights, int8 activations. XNNPACK's static int8 linear needs its output on a
  grid too, so like `tflite-int8` the artifact and its emulation use
  `QuantPlan.with_quantized_output()`. A plan XNNPACK cannot take whole (an op left in the
  portable kernels, or layers the plan keeps float) is refused, naming the op.

Each report carries the delegation table (ops taken by XNNPACK, ops left portable and why).
Module import stays light: the backend is imported inside convert/runner/describe.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.provenance import byte_identical
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, Runner, TargetInfo

if TYPE_CHECKING:
    from mnv4_deploy.quant import QuantPlan

BACKENDS = ("executorch",)
PACKAGES = ("executorch",)
REPRODUCIBLE = byte_identical("torch.export and ExecuTorch's serializer are deterministic, the .pte stores no "
                              "timestamps and the embedded metadata is sorted JSON")


def _num_classes(job: ConvertJob) -> int:
    import torch

    with torch.no_grad():
        return int(job.model(job.example).shape[-1])


def _full_integer_plan(job: ConvertJob, target: str) -> "QuantPlan":
    """The run's plan with its logits quantized (shared with tflite-int8); refused when layers stay float."""
    plan = job.plan
    if plan is None:
        raise UsageError(f"target {target} needs calibration images", "pass --calib-data DIR")
    if plan.float_layers:
        shown = ", ".join(plan.float_layers[:4]) + (" ..." if len(plan.float_layers) > 4 else "")
        raise UsageError(f"target {target} cannot run mixed precision (it lowers the whole plan to XNNPACK's int8 "
                         f"kernels), but the run's plan keeps {len(plan.float_layers)} unit(s) in float ({shown})",
                         "raise --max-drop or drop --eval-data/--max-drop for this target; onnx-int8 can keep them")
    return plan.with_quantized_output()


def refuse_portable_compute(delegation: dict[str, Any], target: str) -> None:
    """int8: an op left to the portable kernels would compute on float or quantized tensors outside XNNPACK."""
    compute = [p for p in delegation["portable"] if p["op"] != "getitem"]
    if compute:
        first = compute[0]
        ops = sorted({p["op"] for p in compute})
        raise DeployError(f"target {target}: XNNPACK did not take {len(compute)} op(s) of the int8 plan "
                          f"({', '.join(ops[:4])}); first: {first['node']} because {first['reason']}",
                          "use onnx-int8 or tflite-int8 for this model, or executorch (fp32)")


class ExecutorchConverter(Converter):
    """An XNNPACK-delegated .pte of the canonical model (fp32) or of the run's int8 plan."""

    def __init__(self, info: TargetInfo, int8: bool):
        self.info = info
        self.int8 = int8

    def convert(self, job: ConvertJob) -> Artifact:
        from .lower import export_program
        from .metadata import artifact_metadata

        path = job.workdir / f"{job.stem}{self.info.suffix}"
        num_classes = _num_classes(job)
        if self.int8:
            from .plan_module import duplicate_shared_dequantize, plan_module

            plan = _full_integer_plan(job, self.info.name)
            embedded = artifact_metadata(job, self.info.name, self.info.precision, num_classes, plan, PACKAGES)
            facts = export_program(plan_module(plan), job.example, path, embedded, prepare=duplicate_shared_dequantize)
            refuse_portable_compute(facts["delegation"], self.info.name)
            facts["activation_quantization"] = {
                "source": "the run's quantization plan (mnv4_deploy.quant), as quantized_decomposed ops",
                "plan_points": len(plan.activation_ranges), "container": "int8 (XNNPACK QS8)",
                "weights": "int8 per output channel [-127, 127]", "logits": "quantized (full-integer)"}
        else:
            embedded = artifact_metadata(job, self.info.name, self.info.precision, num_classes, None, PACKAGES)
            facts = export_program(job.model, job.example, path, embedded)
        delegation = facts["delegation"]
        job.log(f"{self.info.name}: XNNPACK took {delegation['delegated_nodes']} nodes in "
                f"{delegation['delegated_subgraphs']} subgraph(s); {delegation['portable_compute_ops']} compute op(s) "
                f"left to the portable kernels")
        meta = {**facts, "embedded": embedded, **REPRODUCIBLE}
        if self.int8:
            return Artifact(self.info.name, path, self.info.precision, meta, emulation=plan.emulation())
        return Artifact(self.info.name, path, self.info.precision, meta)

    def runner(self, artifact: Artifact) -> Runner:
        from .runtime import pte_runner

        return pte_runner(Path(artifact.path))

    def describe(self, path: Path) -> dict[str, Any]:
        from .runtime import describe_pte

        return describe_pte(Path(path))


_COMMON = dict(format="executorch", backend_modules=BACKENDS, extra="executorch")
EXECUTORCH_FP32 = ExecutorchConverter(TargetInfo(
    name="executorch", precision="fp32", suffix=".pte",
    description="ExecuTorch .pte, XNNPACK-delegated fp32, run by executorch.runtime", **_COMMON), int8=False)
EXECUTORCH_INT8 = ExecutorchConverter(TargetInfo(
    name="executorch-int8", precision="int8", suffix=".int8.pte", needs_calibration=True,
    description="ExecuTorch .pte, XNNPACK int8: the run's plan as per-channel int8 weights and int8 activations",
    **_COMMON), int8=True)
