"""`onnx-opt`: the float ONNX of the canonical model, saved after onnxruntime's graph optimizer.

An example of a third-party mnv4-deploy target. It subclasses `Converter`, declares its own
option (`--ort-opt-level`, listed under its own panel in `mnv4-deploy export --help`) and is
registered by this package's entry point; mnv4-deploy validates its artifact like any target.
The module stays light: onnxruntime is imported inside `convert`, never at module top.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv4_deploy.converters.onnx import INPUT_NAME, describe_onnx, export_float_onnx, op_histogram, ort_runner
from mnv4_deploy.options import TargetOption
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, NotRunnable, Runner, TargetInfo

OPSET = 17
# onnxruntime's GraphOptimizationLevel names, by the option's values
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
ORT_OPT_LEVEL = TargetOption("ort_opt_level", str, "extended", "graph optimizations saved into the model: basic, "
                             "extended or all (all adds layout rewrites for this host's CPU)", panel="ONNX Runtime",
                             choices=tuple(LEVELS))


class OnnxOptConverter(Converter):
    """The float ONNX export, optimized once by onnxruntime and saved, so sessions start faster."""

    info = TargetInfo(name="onnx-opt", format="onnx", precision="fp32", suffix=".ort.onnx",
                      description="ONNX fp32 saved after onnxruntime's graph optimizer (--ort-opt-level)",
                      backend_modules=("onnx", "onnxruntime", "onnxsim"), extra="onnx", options=(ORT_OPT_LEVEL,))

    def convert(self, job: ConvertJob) -> Artifact:
        import onnx
        import onnxruntime as ort

        level = job.options.ort_opt_level
        source = job.workdir / f"{job.stem}.float.onnx"
        meta = export_float_onnx(job.model, job.example, source, OPSET, dynamic_batch=False,
                                 simplify=job.options.simplify)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
        session_options.optimized_model_filepath = str(path)
        session_options.log_severity_level = 3  # "all" warns that it is host-specific: the option's help says so
        ort.InferenceSession(str(source), session_options, providers=["CPUExecutionProvider"])
        source.unlink()
        optimized = op_histogram(onnx.load(str(path)))
        meta.update({"ort_opt_level": level, "onnxruntime": ort.__version__, "input": INPUT_NAME,
                     "op_histogram_before": meta.pop("op_histogram"), "op_histogram": optimized})
        return Artifact(self.info.name, path, self.info.precision, meta)

    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        return ort_runner(Path(artifact.path))

    def describe(self, path: Path) -> dict[str, Any] | None:
        return describe_onnx(Path(path))


ONNX_OPT = OnnxOptConverter()
