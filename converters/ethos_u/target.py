"""The `ethos-u55`, `ethos-u65` and `ethos-u85` targets: the plan's integer TFLite, compiled by Vela.

The artifact is the full-integer TFLite with int8 I/O (`--io-dtype uint8` for camera pixels),
NHWC, batch 1: the form Vela takes and the Cortex-M side feeds. It is the run's `tflite-int8`
artifact when the run has one (its upstream: quantized once), and it is what is judged here,
in LiteRT, against float and against the plan's emulation. Vela then compiles it; beside the
artifact go Vela's three outputs: `<stem>.ethos-uNN_vela.tflite` (the model to flash), its
summary CSV and its per-layer CSV. Vela's verdict (operators on the NPU, every CPU fallback with
Vela's reason, SRAM and flash against the budgets, cycles, inferences/s) goes into the artifact
metadata (`vela`) and its one-line headline into the report's note. `--strict` refuses a model
with any op left on the CPU, `--ethos-sram`/`--ethos-flash` one that does not fit (exit 3).

Vela keeps the integer semantics of the TFLite it is given (it lowers the same int8 operators
onto the NPU's integer pipeline), but its custom op runs only on an Arm Corstone FVP or a board:
no FVP is installable from PyPI or Debian (docs/ethos-u.md), so the compiled model is not run here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mnv4_deploy.errors import DeployError, OpsOffAccelerator, UsageError
from mnv4_deploy.registry import Artifact, ConvertJob, ExportOptions, TargetInfo

from ..edgetpu.target import STRICT
from ..tflite.common import REPRODUCIBLE
from ..tflite.int8_target import BACKENDS, embed_contract, nhwc_full_integer, require_plan
from ..tflite.io_types import IO_DTYPE, check_io_dtype
from ..tflite.runtime import TfliteArtifacts
from .configs import CONFIG_NAMES, OPTIONS, VelaSettings, settings_for
from .report import NPU_OP, VelaReport, vela_report
from .vela import require_vela, run_vela

_IO_DTYPES = ("int8", "uint8")


class MemoryBudgetExceeded(DeployError):
    """The compiled model needs more SRAM or flash than the given budget (exit 3, like --strict).

    A verdict on the model for the device, not a mistake on the command line.
    """

    exit_code = OpsOffAccelerator.exit_code


def ethos_io_dtype(options: ExportOptions) -> str:
    """int8 unless --io-dtype uint8 (float32, the run default, means 'this target's default')."""
    return "int8" if options.io_dtype == "float32" else options.io_dtype


def refuse_if_strict_or_over_budget(report: VelaReport, strict: bool, target: str) -> None:
    """--strict: every op on the NPU; --ethos-sram/--ethos-flash: the compiled model fits."""
    if strict and not report.fully_mapped:
        first = report.cpu_ops[0]
        raise OpsOffAccelerator(f"--strict: Vela left {len(report.cpu_ops)} of {report.ops} ops of {target} on the "
                                f"CPU; first #{first.index} {first.op} ({first.reasons[0]})",
                                "see the Vela table in the report, or drop --strict to accept the CPU fallback")
    misses = report.budget_misses()
    if misses:
        raise MemoryBudgetExceeded(f"{target} ({report.settings.accelerator}, {report.settings.memory_mode}) does not "
                                   f"fit: {'; '.join(misses)}",
                                   "try --ethos-optimise Size, a smaller --img-size or model (conv_small_050), or "
                                   "a larger budget")


class EthosUConverter(TfliteArtifacts):
    """Integer TFLite for one Ethos-U family, judged here, compiled by Vela beside it."""

    def __init__(self, info: TargetInfo, family: str):
        self.info = info
        self.family = family

    def settings(self, options: ExportOptions) -> VelaSettings:
        return settings_for(self.family, options, self.info.name)

    def check_options(self, options: ExportOptions) -> None:
        if options.layout != "nhwc":
            raise UsageError(f"target {self.info.name} needs NHWC input (got --layout {options.layout}): Vela "
                             "would compile an input TRANSPOSE", f"drop --layout for the {self.info.name} target")
        if options.io_dtype != "float32":
            check_io_dtype(options.io_dtype, _IO_DTYPES, self.info.name)
        self.settings(options)  # refuses another family's --ethos-config and unreadable sizes

    def convert(self, job: ConvertJob) -> Artifact:
        require_vela(self.info.name)
        plan = require_plan(job, self.info.name)
        settings = self.settings(job.options)
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta = nhwc_full_integer(job, plan, path, ethos_io_dtype(job.options))
        meta.update(embed_contract(path, job, self.info, "nhwc"))
        output = run_vela(path, job.workdir / "vela", settings, self.info.name)
        report = vela_report(path, output, settings)
        job.log(report.format_table())
        refuse_if_strict_or_over_budget(report, job.options.strict, self.info.name)
        meta["vela"] = report.to_dict()
        meta["details_table"] = report.format_table()
        meta["vela_outputs"] = [p.name for p in self._outputs(output)]
        meta["notes"] = [report.headline(), *meta.get("notes", [])]
        meta.update(REPRODUCIBLE)  # of the integer .tflite; Vela 5.2.0 writes the same bytes again (a test compares)
        return Artifact(self.info.name, path, self.info.precision, meta, emulation=plan.emulation(),
                        companions=self._outputs(output))

    @staticmethod
    def _outputs(output: Any) -> tuple[Path, ...]:
        return tuple(p for p in (output.compiled, output.summary_csv, output.per_layer_csv) if p is not None)

    def check(self, path: Path, compiler_log: Path | None = None, platform: str | None = None) -> dict[str, Any]:
        """`mnv4-deploy check`: Vela on any .tflite, the same table; `--platform u55-128` picks the MAC
        configuration (default: the family's, as for an export), Arm's system config and memory mode."""
        import tempfile

        from mnv4_deploy.converters.tflite.flatbuffer import read_tflite

        if compiler_log is not None:
            raise UsageError(f"target {self.info.name} runs Vela itself; --compiler-log is for edgetpu_compiler logs",
                             "drop --compiler-log")
        require_vela(self.info.name)
        if any(op.op == NPU_OP for op in read_tflite(Path(path)).ops):
            raise UsageError(f"{Path(path).name} is already compiled by Vela (it holds an ethos-u custom op)",
                             "check the integer TFLite it was compiled from")
        settings = self.settings(ExportOptions(ethos_config=platform))
        with tempfile.TemporaryDirectory(prefix="mnv4-vela-") as tmp:
            report = vela_report(Path(path), run_vela(Path(path), Path(tmp), settings, self.info.name), settings)
            return report.to_dict()


def _target(family: str, description: str) -> EthosUConverter:
    name = f"ethos-{family}"
    return EthosUConverter(TargetInfo(
        name=name, format="tflite", precision="int8", suffix=f".{name}.tflite",
        backend_modules=(*BACKENDS, "ethosu"), extra="ethos", needs_calibration=True, upstream="tflite-int8",
        options=(IO_DTYPE, STRICT, *OPTIONS),
        check_platforms=tuple(c for c in CONFIG_NAMES if c.startswith(f"{family}-")),  # check --platform u55-128
        description=f"Arm Ethos-{family.upper()} ({description}): the plan's int8-I/O TFLite, judged in LiteRT, "
                    "compiled by Vela (_vela.tflite, summary and per-layer CSV, op/memory/cycle report)"), family)


ETHOS_U55 = _target("u55", "32-256 MACs, Cortex-M55/M85 microcontrollers")
ETHOS_U65 = _target("u65", "256/512 MACs, with DRAM")
ETHOS_U85 = _target("u85", "128-2048 MACs, runs transformer ops")
