"""The `bpu-x5` / `bpu-x3` targets: a Horizon hb_mapper handoff bundle, judged here.

The artifact is a directory `<stem>.<march>.bpu/` holding what `hb_mapper makertbin` needs
(float ONNX at opset 11, config YAML, calibration files) plus README, manifest.json and
SHA256SUMS. Its runner runs the bundle's float ONNX in onnxruntime, so the pipeline judges it
against the canonical model like any fp32 artifact; the BPU-specific forecasts (NV12 input,
emulated int8) are measured during conversion and reported as extra rows (the artifact's typed
extra_judgements; report.json lists them under each result's "extra_judgements").

Targets come from the `targets` table in `quant_configs/bpu_marches.yaml`: the entry point
`mnv4_deploy.converters.bpu.target:bpu_x5` resolves `bpu_x5` through the module `__getattr__`, so a new
board needs a table row and an entry-point line, no code.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.artifacts import sha256_path
from mnv4_deploy.errors import UsageError
from mnv4_deploy.judgement import Judgement
from mnv4_deploy.options import TargetOption
from mnv4_deploy.provenance import reproducible
from mnv4_deploy.registry import Artifact, ConvertJob, Converter, ExportOptions, NotRunnable, Runner, TargetInfo

from mnv4_deploy.converters.onnx import OPSET

from . import bundle as bundle_files
from .march import TargetRow, get_march, load_target_table

BPU_INPUTS = ("nv12", "rgb", "bgr", "featuremap")
BPU_INPUT = TargetOption("bpu_input", str, "nv12", "board-side input, nv12, rgb, bgr or featuremap", panel="BPU",
                         choices=BPU_INPUTS)
ARCHIVE = TargetOption("archive", bool, False, "also write the bundle as a deterministic .tar.gz", panel="BPU")
# declared alike by the EdgeTPU target (the registry checks the two declarations agree)
STRICT = TargetOption("strict", bool, False, "fail when any op would leave the accelerator (EdgeTPU, BPU, Ethos-U)",
                      panel="Accelerators")

class BpuConverter(Converter):
    """One BPU target (one row of the targets table)."""

    def __init__(self, row: TargetRow):
        self.row = row
        self.info = TargetInfo(
            name=row.name, format="hb_mapper bundle", precision="fp32", suffix=f".{row.march}{bundle_files.SUFFIX}",
            description=f"Horizon {row.board} ({row.march}) hb_mapper bundle: opset-11 ONNX, YAML, calibration files; "
                        "NV12 and int8 emulated here",
            backend_modules=("onnx", "onnxruntime", "onnxsim"), extra="onnx", needs_calibration=True,
            shared_plan=False, options=(OPSET, STRICT, BPU_INPUT, ARCHIVE))

    # ---- before any work ----------------------------------------------------------------
    def check_options(self, options: ExportOptions) -> None:
        if options.bpu_input not in BPU_INPUTS:
            raise UsageError(f"--bpu-input {options.bpu_input!r} is not one of {', '.join(BPU_INPUTS)}")
        self._opset(options)

    def check_output_dir(self, out: Path) -> None:
        found = bundle_files.enclosing_bundle(out)
        if found is not None:
            raise UsageError(f"--out {out} is inside the BPU bundle {found}; a bundle is not mixed with other output",
                             f"write next to it, e.g. --out {found.parent}")

    def check(self, path: Path, compiler_log: Path | None = None) -> dict[str, Any]:
        """`mnv4-deploy check --target bpu-x5 model.onnx`: the march's published op list against any
        ONNX (what `hb_mapper checker` is expected to say), plus an hb_mapper log's node placement."""
        import onnx

        from .hb_log import parse_hb_mapper_log
        from .march import check_onnx_ops

        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise UsageError(f"{path}: not an ONNX model ({type(exc).__name__})", "pass a .onnx file") from None
        march = get_march(self.row.march)
        ops = check_onnx_ops(model, march)
        problems = ops.problems()
        head = (f"{self.row.name} ({march.name}): {len(model.graph.node)} nodes, opset {ops.opset}: "
                + ("every node stays on the BPU" if ops.ok else f"{len(problems)} problem(s)"))
        result: dict[str, Any] = {"target": self.row.name, "march": march.name, "fully_mapped": ops.ok,
                                  "problems": problems, "off_bpu_op_types": ops.off_bpu_op_types,
                                  "table": "\n".join([head, *(f"  {p}" for p in problems)])}
        if compiler_log is not None:
            log = parse_hb_mapper_log(Path(compiler_log).read_text(errors="replace"))
            summary = log.to_dict()
            lines = [f"hb_mapper log: {summary['bpu_nodes']}/{summary['nodes']} nodes on the BPU, "
                     f"{summary['bpu_subgraphs']} BPU subgraph(s)",
                     *(f"  CPU: {n['node']} ({n['op_type']})" for n in summary["cpu_nodes"])]
            result["compiler_log"] = {**summary, "table": "\n".join(lines)}
            result["fully_mapped"] = result["fully_mapped"] and not log.cpu_nodes
        return result

    def describe(self, path: Path) -> dict[str, Any]:
        """`mnv4-deploy inspect` of a bundle: its manifest facts and its float ONNX's I/O and ops."""
        from mnv4_deploy.converters.onnx import describe_onnx

        manifest = bundle_files.read_manifest(Path(path))
        onnx_file = (manifest.get("onnx") or {}).get("file") if isinstance(manifest.get("onnx"), dict) else None
        if not isinstance(onnx_file, str) or Path(onnx_file).name != onnx_file:
            raise UsageError(f"{path}: {bundle_files.MANIFEST} names no ONNX file of the bundle",
                             "pass a directory written by --to bpu-x5 or bpu-x3")
        inner = Path(path) / onnx_file
        if not inner.is_file() or inner.stat().st_size == 0:
            raise UsageError(f"{path}: the bundle's ONNX {onnx_file} is missing or empty", "export the bundle again")
        return {**describe_onnx(inner), "format": "hb_mapper bundle", "bundle_onnx": onnx_file,
                "march": manifest.get("march"), "target": manifest.get("target")}

    def _opset(self, options: ExportOptions) -> int:
        march = get_march(self.row.march)
        if "opset" not in options.changed():
            return max(march.onnx_opsets)
        if options.opset not in march.onnx_opsets:
            raise UsageError(f"--opset {options.opset}: {self.row.name} ({march.name}) accepts ONNX opset "
                             f"{', '.join(map(str, march.onnx_opsets))}", f"drop --opset for {self.row.name}")
        return options.opset

    # ---- convert ------------------------------------------------------------------------
    def convert(self, job: ConvertJob) -> Artifact:
        from mnv4_deploy.converters.onnx import INPUT_NAME

        from .build import build_bundle

        if job.calibration is None:
            raise UsageError(f"target {self.info.name} needs calibration images", "pass --calib-data DIR")
        path = job.workdir / f"{job.stem}{self.info.suffix}"
        meta, forecasts = build_bundle(job, self.row, path, self._opset(job.options), INPUT_NAME)
        companions: tuple[Path, ...] = ()
        if job.options.archive:
            from .archive import write_tar_gz

            archive = write_tar_gz(path, job.workdir / f"{path.name}.tar.gz")
            meta["archive"] = {"file": archive.name, "sha256": sha256_path(archive)}
            companions = (archive,)
        meta.update(reproducible("every bundle file is deterministic for the same model, options, calibration "
                                 "images and tool versions; --archive sorts entries and fixes mtime/owner"))
        return Artifact(self.info.name, path, self.info.precision, meta, companions=companions,
                        extra_judgements=forecast_judgements(forecasts))

    # ---- judge --------------------------------------------------------------------------
    def runner(self, artifact: Artifact) -> Runner | NotRunnable:
        """The bundle's float ONNX in onnxruntime; the (N, classes, 1, 1) output is flattened."""
        from mnv4_deploy.converters.onnx import ort_runner

        manifest = bundle_files.read_manifest(artifact.path)
        return flattened(ort_runner(artifact.path / manifest["onnx"]["file"]))


def flattened(inner: Runner) -> Runner:
    """`inner` with its (N, classes, 1, 1) output flattened; its latency variant flattened alike."""
    def run(batch: np.ndarray) -> np.ndarray:
        out = inner.run(batch)
        return out.reshape(out.shape[0], -1)

    variant = inner.latency_variant
    return Runner(run=run, runtime=f"{inner.runtime}, the bundle's float ONNX",
                  latency_variant=None if variant is None else lambda: flattened(variant()))


def forecast_judgements(forecasts: list[dict[str, Any]]) -> tuple[Judgement, ...]:
    """The board forecasts (NV12 input, emulated int8) as extra judged rows of the report; an int8
    forecast outside the run's int8 bounds says so in its notes (informative: it does not gate)."""
    return tuple(Judgement(name=v["name"], label=v.get("label", ""), parity=v["parity"], accuracy=v.get("accuracy"),
                           notes=tuple(v.get("int8_bound_failures", ())), images=v.get("images"), on=v.get("on"))
                 for v in forecasts)


@functools.lru_cache(maxsize=None)
def converter_for(name: str) -> BpuConverter:
    rows = load_target_table()
    if name not in rows:
        raise UsageError(f"no BPU target {name!r} in quant_configs/bpu_marches.yaml", f"known: {', '.join(rows)}")
    return BpuConverter(rows[name])


def __getattr__(attr: str) -> Any:
    """`bpu_x5` -> the converter of target `bpu-x5` (what the entry points name)."""
    if attr.startswith("bpu_"):
        return converter_for(attr.replace("_", "-"))
    raise AttributeError(attr)


__all__ = ["BPU_INPUTS", "BpuConverter", "converter_for", "forecast_judgements"]
