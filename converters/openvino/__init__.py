"""OpenVINO targets: `openvino` (IR, fp32 compute) and `openvino-int8` (the run's plan as QDQ).

OpenVINO is what Intel CPUs, iGPUs and NPUs run. Both targets go through ONNX, which OpenVINO's
frontend reads natively (ir.py), and run here on OpenVINO's CPU plugin:

- `openvino`: the canonical model's float ONNX (`mnv4_deploy.converters.onnx.export_float_onnx`) as IR;
  fp32 weights, or fp16 weights with `--openvino-fp16-weights` (`ov.save_model(compress_to_fp16)`:
  weights stored in fp16 and decompressed on load; compute stays fp32). Judged as fp16 then.
- `openvino-int8`: the plan's QDQ ONNX (`mnv4_deploy.quant.onnx_qdq.export_qdq_onnx`, the writer
  `onnx-int8` uses, with int8 weights) as IR: OpenVINO turns each Q/DQ pair into a FakeQuantize
  and its low-precision transformations run the convolutions in int8 on the plan's grids.

The IR `.xml`/`.bin` pair is one artifact directory `<model>.openvino/`; its rt_info carries
the contract, class count and (int8) the plan's hash. Module import stays light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.errors import UsageError
from mnv4_deploy.options import TargetOption
from mnv4_deploy.provenance import byte_identical
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, Runner, TargetInfo

BACKENDS = ("openvino", "onnx", "onnxsim")
PACKAGES = ("openvino", "onnx")
ONNX_OPSET = 17  # the intermediate ONNX; OpenVINO reads opsets 7..22
REPRODUCIBLE = byte_identical("the ONNX is deterministic, OpenVINO reads it from memory (no path in the IR) and "
                              "serializes without timestamps; the embedded metadata is sorted JSON")


def _num_classes(job: ConvertJob) -> int:
    import torch

    with torch.no_grad():
        return int(job.model(job.example).shape[-1])


def fp16_weight_emulation(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The model with every weight rounded to fp16, computed in fp32: what a compressed IR runs."""
    import copy

    import torch

    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return rounded(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return run


class OpenvinoConverter(Converter):
    """OpenVINO IR of the canonical model (fp32 / fp16 weights) or of the run's int8 plan."""

    def __init__(self, info: TargetInfo, int8: bool):
        self.info = info
        self.int8 = int8

    def _onnx(self, job: ConvertJob, onnx_path: Path) -> dict[str, Any]:
        if self.int8:
            from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx

            if job.plan is None:
                raise UsageError(f"target {self.info.name} needs calibration images", "pass --calib-data DIR")
            export_qdq_onnx(job.plan, onnx_path, job.example, opset=ONNX_OPSET, weight_dtype="int8")
            return {"source": "the run's plan as QDQ ONNX (export_qdq_onnx, int8 weights, as onnx-int8 writes it)",
                    "float_layers": list(job.plan.float_layers)}
        from mnv4_deploy.converters.onnx import export_float_onnx

        export_float_onnx(job.model, job.example, onnx_path, ONNX_OPSET, dynamic_batch=False, simplify=True)
        return {"source": "the canonical model's float ONNX (export_float_onnx, onnxsim-simplified)"}

    def convert(self, job: ConvertJob) -> Artifact:
        from mnv4_deploy.converters.executorch.metadata import artifact_metadata
        from mnv4_deploy.quant.overflow import x86_saturation

        from .ir import describe_ir, onnx_to_ir

        fp16_weights = bool(job.options.openvino_fp16_weights) and not self.int8
        precision = "fp16" if fp16_weights else self.info.precision
        plan = job.plan if self.int8 else None
        onnx_path = job.workdir / f"{job.stem}.for-openvino.onnx"
        source = self._onnx(job, onnx_path)
        embedded = artifact_metadata(job, self.info.name, precision, _num_classes(job), plan, PACKAGES)
        embedded["weights_storage"] = "fp16" if fp16_weights else ("int8" if self.int8 else "fp32")
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        onnx_to_ir(onnx_path, path, job.stem, embedded, fp16_weights, list(job.example.shape))
        onnx_path.unlink()
        facts = describe_ir(path)
        meta = {"route": "ONNX (opset 17) -> openvino.convert_model -> openvino.save_model", "onnx": source,
                "fp16_weights": fp16_weights, "files": facts["files"], "inputs": facts["inputs"],
                "outputs": facts["outputs"], "op_histogram": facts["op_histogram"],
                "constant_types": facts["constant_types"], "embedded": embedded, **REPRODUCIBLE}
        if self.int8:
            meta["fake_quantize_ops"] = facts["op_histogram"].get("FakeQuantize", 0)
            meta.update(x86_saturation(job.plan))
            return Artifact(self.info.name, path, self.info.precision, meta, emulation=job.plan.emulation())
        if fp16_weights:  # judged as fp16 against float, and at fp32 bounds against the fp16-weight model
            return Artifact(self.info.name, path, precision, meta, emulation=fp16_weight_emulation(job.model),
                            emulation_bounds="fp32")
        return Artifact(self.info.name, path, precision, meta)

    def declared_precision(self, description: dict[str, Any]) -> str:
        """The precision an IR says it was exported at (fp16 with --openvino-fp16-weights), for validate."""
        precision = (description.get("metadata") or {}).get("precision")
        return precision if precision in ("fp32", "fp16", "int8") else self.info.precision

    def runner(self, artifact: Artifact) -> Runner:
        from .ir import ir_runner

        return ir_runner(Path(artifact.path), no_vnni_check=self.int8)

    def describe(self, path: Path) -> dict[str, Any]:
        from .ir import describe_ir

        return describe_ir(Path(path))


FP16_WEIGHTS = TargetOption("openvino_fp16_weights", bool, False, "store the IR's weights in fp16 (compute "
                            "stays fp32)", panel="OpenVINO")
OPENVINO_FP32 = OpenvinoConverter(TargetInfo(
    name="openvino", format="openvino", precision="fp32", suffix=".openvino", backend_modules=BACKENDS,
    extra="openvino", options=(FP16_WEIGHTS,),
    description="OpenVINO IR (.xml/.bin directory), fp32 compute on OpenVINO's CPU plugin; "
                "--openvino-fp16-weights stores fp16 weights"), int8=False)
OPENVINO_INT8 = OpenvinoConverter(TargetInfo(
    name="openvino-int8", format="openvino", precision="int8", suffix=".int8.openvino", backend_modules=BACKENDS,
    extra="openvino", needs_calibration=True, x86_int8_kernels=True,
    description="OpenVINO IR int8: the run's plan as QDQ (FakeQuantize), per-channel int8 weights, "
                "run on OpenVINO's CPU plugin"), int8=True)
