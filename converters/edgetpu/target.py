"""`edgetpu`: a full-integer TFLite made for the EdgeTPU, statically checked, compiled when possible.

The model is the run's plan as full-integer TFLite (the `tflite-int8` route; the run's
`tflite-int8` artifact is reused when present), with integer I/O, static shapes, batch 1 and
NHWC input. I/O is uint8 by default: what Coral's examples and pycoral's image adapters feed
(camera pixels), written as a QUANTIZE uint8 -> int8 at the input and int8 -> uint8 at the
output, which the EdgeTPU maps; `--io-dtype int8` drops those two ops.

Every artifact gets the static check of converters/edgetpu/report.py (per-op table in the
metadata: ops mapped, the first op that would fall back to CPU, and why). Where
`edgetpu_compiler` is on PATH it also runs, `<stem>_edgetpu.tflite` is kept beside the artifact
and its log is parsed into the same table. `--strict` turns any op left on the CPU into an error.
The artifact itself runs here in the LiteRT interpreter (the CPU form of the same model).
"""
from __future__ import annotations

import collections
import shutil
from pathlib import Path
from typing import Any

from mnv4_deploy.errors import OpsOffAccelerator, UsageError
from mnv4_deploy.options import TargetOption
from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, TargetInfo

from ..tflite.common import REPRODUCIBLE
from ..tflite.int8_target import BACKENDS, embed_contract, nhwc_full_integer, require_plan
from ..tflite.io_types import IO_DTYPE, check_io_dtype
from ..tflite.runtime import TfliteArtifacts

DEFAULT_IO_DTYPE = "uint8"
_IO_DTYPES = ("int8", "uint8")
# declared alike by the BPU targets, shared with the Ethos-U ones (the registry checks declarations agree)
STRICT = TargetOption("strict", bool, False, "fail when any op would leave the accelerator (EdgeTPU, BPU, Ethos-U)",
                      panel="Accelerators")


def edgetpu_io_dtype(options: ExportOptions) -> str:
    """uint8 unless --io-dtype int8 (float32, the run default, means 'this target's default')."""
    return DEFAULT_IO_DTYPE if options.io_dtype == "float32" else options.io_dtype


def static_check_summary(path: Path) -> dict[str, Any]:
    """The static checker's verdict as report data: counts, first CPU op and why, per-op rows."""
    from .report import FALLS_BACK, check_tflite

    report = check_tflite(path)
    first = next((r for r in report.rows if r.index == report.first_unmapped_index), None)
    on_cpu = collections.Counter(r.op for r in report.rows if not r.maps_to_edgetpu)
    # ops that cannot map on their own (not merely after the first unsupported one)
    blocking = collections.Counter(r.op for r in report.rows if any(x != FALLS_BACK for x in r.reasons)
                                   and r.status != "cpu_boundary")
    return {"fully_mapped": report.fully_mapped, "counts": report.counts,
            "first_cpu_op": None if first is None else {"index": first.index, "op": first.op,
                                                        "reasons": first.reasons},
            "ops_on_cpu": dict(sorted(on_cpu.items())), "unsupported_ops": dict(sorted(blocking.items())),
            "rows": [[r.index, r.op, r.status, (r.reasons or [""])[0]] for r in report.rows],
            "table": report.format_table()}


def compile_if_available(path: Path, job: ConvertJob) -> tuple[dict[str, Any], Path | None]:
    """Run edgetpu_compiler when installed: its verdict, and `<stem>_edgetpu.tflite` in the workdir.

    The compiled model is the artifact's companion: the pipeline moves it beside the artifact
    with the same atomic move, so a failed export leaves neither behind.
    """
    from .compiler import EdgeTpuCompilerFailed, find_edgetpu_compiler, run_edgetpu_compiler

    if find_edgetpu_compiler() is None:
        return {"ran": False, "reason": "edgetpu_compiler is not on PATH here (x86-64 Debian/Ubuntu only)"}, None
    source = job.workdir / "compile" / f"{job.stem}.tflite"  # the compiler names its output <stem>_edgetpu
    source.parent.mkdir()
    shutil.copyfile(path, source)
    try:
        log = run_edgetpu_compiler(source, job.workdir / "compiled")
    except EdgeTpuCompilerFailed as exc:
        return {"ran": True, "succeeded": False, "error": exc.one_line(),
                "log": exc.log.to_dict() if exc.log else None}, None
    compiled = Path(log.edgetpu_model)  # <workdir>/compiled/<stem>_edgetpu.tflite
    return {"ran": True, "succeeded": True, "compiled_model": compiled.name, "log": log.to_dict(),
            "table": log.format_table()}, compiled


class EdgeTpuConverter(TfliteArtifacts):
    """Full-integer, integer-I/O TFLite for the EdgeTPU, with the static check in its metadata."""

    def __init__(self, info: TargetInfo):
        self.info = info

    def check_options(self, options: ExportOptions) -> None:
        if options.layout != "nhwc":
            raise UsageError(f"target edgetpu needs NHWC input (got --layout {options.layout}): an input "
                             "TRANSPOSE would leave the accelerator", "drop --layout for the edgetpu target")
        if options.io_dtype != "float32":
            check_io_dtype(options.io_dtype, _IO_DTYPES, self.info.name)

    def convert(self, job: ConvertJob) -> Artifact:
        plan = require_plan(job, self.info.name)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta = nhwc_full_integer(job, plan, path, edgetpu_io_dtype(job.options))
        meta.update(embed_contract(path, job, self.info, "nhwc"))
        check = static_check_summary(path)
        meta["edgetpu_static_check"] = check
        if job.options.strict and not check["fully_mapped"]:
            first = check["first_cpu_op"]
            raise OpsOffAccelerator(f"--strict: ops the EdgeTPU cannot run: "
                                    f"{', '.join(f'{op} x{n}' for op, n in check['unsupported_ops'].items())}; first "
                                    f"#{first['index']} {first['op']} ({first['reasons'][0]}), so "
                                    f"{check['counts']['on_cpu']} of {check['counts']['ops']} ops would run on the CPU",
                                    "use a conv variant, or drop --strict to accept the CPU fallback")
        compiled, compiled_model = compile_if_available(path, job)
        meta["edgetpu_compiler"] = compiled
        if job.options.strict and compiled.get("succeeded") and compiled["log"].get("ops_on_cpu"):
            raise OpsOffAccelerator(f"--strict: edgetpu_compiler left {compiled['log']['ops_on_cpu']} op(s) on the CPU",
                                    "see the compiler table in the report, or drop --strict")
        mapped = check["counts"]["on_edgetpu"]
        job.log(f"edgetpu static check: {mapped}/{check['counts']['ops']} ops map to the EdgeTPU"
                + ("" if check["fully_mapped"] else f"; first CPU op #{check['first_cpu_op']['index']} "
                                                    f"{check['first_cpu_op']['op']}"))
        meta.update(REPRODUCIBLE)  # of the .edgetpu.tflite; the compiler's own output is not checked here
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=plan.emulation(),
                        companions=(compiled_model,) if compiled_model is not None else ())

    def check(self, path: Path, compiler_log: Path | None = None) -> dict[str, Any]:
        """`mnv4-deploy check`: the static per-op verdict for any .tflite, plus a compiler log's
        table when given one (e.g. from a machine where edgetpu_compiler is installed)."""
        from .compiler import parse_compiler_log

        result = static_check_summary(Path(path))
        if compiler_log is not None:
            log = parse_compiler_log(Path(compiler_log).read_text(errors="replace"))
            result["compiler_log"] = {**log.to_dict(), "table": log.format_table()}
            result["fully_mapped"] = result["fully_mapped"] and log.fully_mapped
        return result



EDGETPU = EdgeTpuConverter(TargetInfo(
    name="edgetpu", format="tflite", precision="int8", suffix=".edgetpu.tflite", backend_modules=BACKENDS,
    extra="tflite", needs_calibration=True, upstream="tflite-int8", options=(IO_DTYPE, STRICT),
    description="EdgeTPU full-integer TFLite (uint8 I/O unless --io-dtype int8, NHWC, batch 1), statically "
                "checked op by op; compiled with edgetpu_compiler when installed"))
