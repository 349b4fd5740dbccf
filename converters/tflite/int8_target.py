"""`tflite-int8`: full-integer TFLite of the run's quantization plan, run by the LiteRT interpreter.

The plan is the run's one plan; full-integer needs the logits on a grid too, so the artifact
and its emulation both use `QuantPlan.with_quantized_output()` (same ranges and weights, output
point enabled). float32 I/O by default (QUANTIZE/DEQUANTIZE at the boundary); `--io-dtype
int8|uint8` gives integer I/O, which the generic runner feeds with the tensors' scale/zero point.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, TargetInfo

from .common import LAYOUT, REPRODUCIBLE, check_layout, tool_versions
from .io_types import IO_DTYPE, IO_DTYPES, check_io_dtype
from .metadata import contract_payload, embed_metadata
from .runtime import TfliteArtifacts, describe_tflite, open_interpreter

if TYPE_CHECKING:
    from mnv4_deploy.quant import QuantPlan

BACKENDS = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")
def require_plan(job: ConvertJob, target: str) -> "QuantPlan":
    """The full-integer variant of the run's plan with LiteRT's fixed softmax grid (made once per
    plan, shared with edgetpu and the Ethos-U targets); a clear error when there is no plan."""
    from .full_integer import check_plan_full_integer

    if job.plan is None or job.calibration is None:
        raise UsageError(f"target {target} needs calibration images", "pass --calib-data DIR")
    check_plan_full_integer(job.plan, target)
    plan = job.plan.with_quantized_output()
    fixed = plan.with_fixed_softmax_grids(job.log)  # LiteRT's int8 SOFTMAX writes on 1/256, zero point -128
    if fixed is not plan:
        wide = plan.calibrated_softmax_grids
        job.log(f"{target}: LiteRT's int8 SOFTMAX has a fixed 1/256 output grid; {len(wide)} softmax(es) the plan "
                f"calibrates (up to {max(wide.values())} wide: {', '.join(list(wide)[:3])}) computed on it, "
                f"biases re-corrected; onnx-int8/coreml-int8 keep the finer grids")
    return fixed


def embed_contract(path: Path, job: ConvertJob, info: TargetInfo, layout: str) -> dict[str, Any]:
    """Embed the preprocessing contract and return the artifact's I/O facts and tool versions."""
    shape = [int(d) for d in open_interpreter(path).get_input_details()[0]["shape"]]
    versions = tool_versions()
    embed_metadata(path, contract_payload(job.contract, layout, shape,
                                          {"model": job.stem, "target": info.name, "precision": info.precision,
                                           "producer": "mnv4-deploy", "tools": versions}))
    facts = describe_tflite(path)
    return {"layout": layout, "strict_export": True, "tools": versions, "inputs": facts["inputs"],
            "outputs": facts["outputs"], "op_histogram": facts["op_histogram"]}


def nhwc_full_integer(job: ConvertJob, plan: "QuantPlan", path: Path, io_dtype: str) -> dict[str, Any]:
    """The plan as full-integer NHWC TFLite with `io_dtype` I/O at `path`, for the accelerator targets
    built on tflite-int8 (edgetpu, ethos-u*): the run's tflite-int8 artifact is reused when it is NHWC
    (same plan, same route: quantized once per run), else the model is converted once per run here
    (int8 I/O, kept in the run cache) and each target sets its own I/O type on a copy."""
    import shutil

    from .io_types import set_io_dtype

    up = job.upstream
    if up is not None and up.metadata.get("layout") == "nhwc" and Path(up.path).is_file():
        shutil.copyfile(up.path, path)
        set_io_dtype(path, io_dtype)
        keep = ("route", "quantization", "plan_ranges")
        return {**{k: up.metadata[k] for k in keep if k in up.metadata}, "io_dtype": io_dtype,
                "full_integer_source": f"this run's {up.target} artifact {Path(up.path).name}"}
    key = ("nhwc_full_integer", plan.sha256)  # several accelerator targets of one run convert once
    if key not in job.run_cache:
        from .full_integer import build_full_integer

        meta = build_full_integer(plan, job.calibration.tensors, job.example, path, "nhwc", "int8", job.log,
                                  target="tflite-int8 (the accelerator targets' full-integer model)")
        job.run_cache[key] = (path.read_bytes(), meta)
    model, meta = job.run_cache[key]
    path.write_bytes(model)
    set_io_dtype(path, io_dtype)
    return {**meta, "io_dtype": io_dtype, "full_integer_source": "converted for this run's accelerator targets"}


class TfliteInt8Converter(TfliteArtifacts):
    """Full-integer TFLite (int8 weights per channel, int8 activations) of the run's plan."""

    def __init__(self, info: TargetInfo):
        self.info = info

    def check_options(self, options: ExportOptions) -> None:
        check_layout(options.layout)
        check_io_dtype(options.io_dtype, IO_DTYPES, self.info.name)

    def convert(self, job: ConvertJob) -> Artifact:
        from .full_integer import build_full_integer

        plan = require_plan(job, self.info.name)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta = build_full_integer(plan, job.calibration.tensors, job.example, path, job.options.layout,
                                  job.options.io_dtype, job.log, target=self.info.name)
        meta.update(embed_contract(path, job, self.info, job.options.layout))
        meta.update(REPRODUCIBLE)
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=plan.emulation())



TFLITE_INT8 = TfliteInt8Converter(TargetInfo(
    name="tflite-int8", format="tflite", precision="int8", suffix=".int8.tflite", backend_modules=BACKENDS,
    extra="tflite", needs_calibration=True, options=(LAYOUT, IO_DTYPE),
    description="TFLite full-integer: int8 per-channel weights and int8 activations on the run's plan; "
                "float32 I/O unless --io-dtype int8|uint8"))
