"""`tflite-int8`: full-integer TFLite of the run's quantization plan, run by the LiteRT interpreter.

Every op is int8 except a softmax wider than LiteRT's fixed 1/256 output grid resolves (tokens
attending over a feature map): it runs in float between DEQUANTIZE and QUANTIZE, its output on
the plan's calibrated grid (softmax_islands.py), and report.md lists it under the target.

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
def require_plan(job: ConvertJob, target: str, float_softmax: bool = False) -> "QuantPlan":
    """The full-integer variant of the run's plan; a clear error when there is no plan.

    LiteRT's int8 SOFTMAX writes on a fixed 1/256 grid. With `float_softmax` (tflite-int8, which
    LiteRT runs on a CPU) the softmaxes the plan gives a finer grid are computed in float
    (softmax_islands.py) and the plan is kept; otherwise (EdgeTPU, Ethos-U: nothing float on the
    NPU) it is the variant with every softmax on the fixed grid, made once per plan and shared.
    """
    from .full_integer import check_plan_full_integer

    if job.plan is None or job.calibration is None:
        raise UsageError(f"target {target} needs calibration images", "pass --calib-data DIR")
    check_plan_full_integer(job.plan, target)
    plan = job.plan.with_quantized_output()
    wide = plan.calibrated_softmax_grids
    if not wide:
        return plan
    shown = f"{len(wide)} softmax(es) the plan calibrates (up to {max(wide.values())} wide: {', '.join(list(wide)[:3])})"
    if float_softmax:
        job.log(f"{target}: LiteRT's int8 SOFTMAX has a fixed 1/256 output grid; {shown} run in float "
                f"(DEQUANTIZE -> SOFTMAX -> QUANTIZE onto the plan's grid)")
        return plan
    job.log(f"{target}: LiteRT's int8 SOFTMAX has a fixed 1/256 output grid and the NPU runs no float op; {shown} "
            f"computed on it, biases re-corrected; tflite-int8/onnx-int8/coreml-int8 keep the finer grids")
    return plan.with_fixed_softmax_grids(job.log)


def float_softmax_table(islands: list[dict[str, Any]]) -> str:
    """The ops tflite-int8 keeps in float, and why (report.md shows it under the target)."""
    lines = ["ops kept in float (DEQUANTIZE -> SOFTMAX -> QUANTIZE; every other op is int8):"]
    lines += [f"  SOFTMAX of plan unit {i['unit']}: output on the plan's grid (scale {i['grid'][0]:.3g}, zero point "
              f"{i['grid'][1]}); {i['reason']}" for i in islands]
    return "\n".join(lines)


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
    (same plan, same route: quantized once per run) unless it computes softmaxes in float, else the model is converted once per run here
    (int8 I/O, kept in the run cache) and each target sets its own I/O type on a copy."""
    import shutil

    from .io_types import set_io_dtype

    fixed = plan.stats.get("fixed_softmax_grids") or []
    notes = {"notes": [f"{len(fixed)} wide softmax(es) on LiteRT's fixed 1/256 int8 grid (tflite-int8 keeps them "
                       f"in float)"]} if fixed else {}
    up = job.upstream
    if (up is not None and up.metadata.get("layout") == "nhwc" and not up.metadata.get("float_softmax")
            and Path(up.path).is_file()):
        shutil.copyfile(up.path, path)
        set_io_dtype(path, io_dtype)
        keep = ("route", "quantization", "plan_ranges")
        return {**{k: up.metadata[k] for k in keep if k in up.metadata}, "io_dtype": io_dtype, **notes,
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
    return {**meta, "io_dtype": io_dtype, **notes,
            "full_integer_source": "converted for this run's accelerator targets"}


class TfliteInt8Converter(TfliteArtifacts):
    """Full-integer TFLite (int8 weights per channel, int8 activations) of the run's plan."""

    def __init__(self, info: TargetInfo):
        self.info = info

    def check_options(self, options: ExportOptions) -> None:
        check_layout(options.layout)
        check_io_dtype(options.io_dtype, IO_DTYPES, self.info.name)

    def convert(self, job: ConvertJob) -> Artifact:
        from .full_integer import build_full_integer

        plan = require_plan(job, self.info.name, float_softmax=True)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta = build_full_integer(plan, job.calibration.tensors, job.example, path, job.options.layout,
                                  job.options.io_dtype, job.log, target=self.info.name, float_softmax=True)
        meta.update(embed_contract(path, job, self.info, job.options.layout))
        meta.update(REPRODUCIBLE)
        if meta["float_softmax"]:
            meta["notes"] = [f"{len(meta['float_softmax'])} wide softmax(es) in float"]
            meta["details_table"] = float_softmax_table(meta["float_softmax"])
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=plan.emulation())



TFLITE_INT8 = TfliteInt8Converter(TargetInfo(
    name="tflite-int8", format="tflite", precision="int8", suffix=".int8.tflite", backend_modules=BACKENDS,
    extra="tflite", needs_calibration=True, options=(LAYOUT, IO_DTYPE),
    description="TFLite full-integer: int8 per-channel weights and int8 activations on the run's plan (a softmax "
                "wider than 32 values runs in float, its output on the plan's grid); float32 I/O unless "
                "--io-dtype int8|uint8"))
