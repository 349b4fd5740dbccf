"""Assemble one BPU bundle from a ConvertJob: the steps in order, each done by its own module.

ONNX (`onnx_model`) -> op check -> hb_mapper YAML (`yaml_config`) -> calibration files
(`calibration`) -> forecasts on the bundle's own files (`forecast`) -> the vendor toolchain when
present (`toolchain`) -> README (`readme`) -> manifest and SHA256SUMS (`bundle`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.registry import ConvertJob

from . import bundle as bundle_files
from .calibration import read_calibration_file, write_calibration_files
from .forecast import BPU_RECIPE, build_int8, forecasts, measure, readme_results, sample_from
from .march import TargetRow, get_march
from .onnx_model import check_bundle_onnx, export_bpu_onnx
from .readme import render_readme
from .toolchain import hb_mapper_command, run_hb_mapper
from .yaml_config import hb_config_dict, render_hb_config

CONFIG_FILE = "hb_mapper_config.yaml"
README_FILE = "README.md"
INT8_EMULATION_FILE = "int8_emulation.onnx"  # written into the private workdir, not shipped


def calibration_dir(input_type_rt: str) -> str:
    return "calibration_data_featuremap_f32" if input_type_rt == "featuremap" else "calibration_data_rgb_f32"


def calibration_images(job: ConvertJob) -> list[Path]:
    """The first `calibration.size` (bpu recipe: 200) of the run's seeded calibration images."""
    from mnv4_deploy.recipes import load_recipe

    batch = job.calibration
    count = min(len(batch.files), load_recipe(BPU_RECIPE).calibration_size)
    return [Path(batch.source) / name for name in batch.files[:count]]


def _float_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from mnv4_deploy.converters.onnx import ort_runner

    inner = ort_runner(path)
    return lambda batch: inner.run(batch).reshape(len(batch), -1)


def _int8_bound_failures(job: ConvertJob, rows: list[dict[str, Any]]) -> None:
    """Judge each int8 forecast by the run's int8 parity bounds (reported, not gating: the
    artifact is the float model; the board's int8 build happens on the vendor side)."""
    from mnv4_deploy.validate import ParityMetrics

    bounds = job.recipe.thresholds("int8")
    for row in rows:
        if row["name"].startswith("int8"):
            row["int8_bound_failures"] = bounds.failures(ParityMetrics(**row["parity"]))


def build_bundle(job: ConvertJob, row: TargetRow, path: Path, opset: int,
                 input_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write the bundle directory at `path`; return the artifact metadata and the board forecasts
    (the bundle manifest's forecast variants; the artifact carries them as its extra_judgements only)."""
    march = get_march(row.march)
    input_type_rt = job.options.bpu_input
    path.mkdir(parents=True)
    onnx_file = f"{job.stem}.onnx"
    onnx_meta = export_bpu_onnx(job.model, job.example, path / onnx_file, opset, job.options.simplify, march)
    check, notes = check_bundle_onnx(path / onnx_file, march, job.options.strict, job.log)

    cal_dir = calibration_dir(input_type_rt)
    yaml_args = dict(input_name=input_name, input_type_rt=input_type_rt, cal_data_dir=f"./{cal_dir}",
                     compile_mode=row.compile_mode, optimize_level=row.optimize_level)
    prefix = hb_config_dict(job.contract, f"./{onnx_file}", march.name, **yaml_args)["model_parameters"][
        "output_model_file_prefix"]
    (path / CONFIG_FILE).write_text(render_hb_config(job.contract, f"./{onnx_file}", march.name, **yaml_args))

    featuremap = input_type_rt == "featuremap"
    cal = write_calibration_files(calibration_images(job), job.contract, path / cal_dir, normalized=featuremap)
    if cal.warning:
        job.log(f"warning: {row.name}: {cal.warning}")
        notes.append(cal.warning)
    shape = job.contract.input_shape
    calib = np.concatenate([read_calibration_file(f, shape) for f in cal.files])
    calib = calib if featuremap else job.contract.normalize(calib)

    float_run = _float_runner(path / onnx_file)
    # bpu-x5 and bpu-x3 in one run calibrate on the same files: one plan, not one per target
    key = ("bpu-int8-emulation", cal.sha256, featuremap)
    if key not in job.run_cache:
        job.run_cache[key] = build_int8(job.model, calib, job.example, job.workdir / INT8_EMULATION_FILE, job.log)
    int8_run, int8_facts = job.run_cache[key]
    sample = sample_from(job.evaluation, calib, float_run)
    float_row = measure("float", "float ONNX, contract preprocessing", float_run, sample.tensors, sample)
    rows = forecasts(float_run, int8_run, job.contract, sample, input_type_rt)
    _int8_bound_failures(job, rows)

    toolchain = run_hb_mapper(path, onnx_file, CONFIG_FILE, march.name, input_name, shape, job.log)
    results = readme_results(float_row, rows)
    (path / README_FILE).write_text(render_readme(
        model_name=str(job.model_info.get("timm_name") or job.model_info.get("name") or job.stem),
        onnx_file=onnx_file, config_file=CONFIG_FILE, march=march.name, input_name=input_name, input_shape=shape,
        preprocess=job.contract, output_model_file_prefix=prefix, results=results, cal_data_dir=f"./{cal_dir}",
        calibration_count=len(cal.files), calibration_sha256=cal.sha256, op_check=check, input_type_rt=input_type_rt,
        bundle_dir=path.name, output_shape=onnx_meta["output_shape"]))

    calibration = {"dir": cal_dir, "count": len(cal.files), "sha256": cal.sha256, "normalized": featuremap,
                   "files": [f.name for f in cal.files], "run_calibration_sha256": job.calibration.sha256,
                   "warning": cal.warning}
    onnx_section = {"file": onnx_file, "sha256": bundle_files.sha256_path(path / onnx_file), **onnx_meta}
    op_check = {"ok": check.ok, "off_bpu": [f"{n.name} ({n.op_type}): {n.kind}" for n in check.off_bpu]}
    forecast = {"on": sample.source, "images": int(len(sample.tensors)), "float": float_row, "variants": rows,
                "int8_emulation": int8_facts, "readme_results": results}
    from mnv4_deploy.provenance import package_versions

    bundle_files.write_manifest(path, {
        "target": row.name, "march": march.name, "board": row.board,
        "model": bundle_files.model_section(job.model_info, job.model), "contract": job.contract.to_dict(),
        "onnx": onnx_section, "hb_mapper_config": {"file": CONFIG_FILE, "input_type_rt": input_type_rt,
                                                   "output_model_file_prefix": prefix},
        "calibration": calibration, "op_check": op_check, "forecast": forecast, "toolchain": toolchain,
        "versions": package_versions()})
    bundle_files.write_sums(path)
    meta = {"march": march.name, "board": row.board, "input_type_rt": input_type_rt, "onnx": onnx_section,
            "op_check": op_check, "calibration": {k: v for k, v in calibration.items() if k != "files"},
            "forecast_on": sample.source, "int8_emulation": int8_facts, "notes": notes,
            "toolchain": toolchain if toolchain is not None else hb_mapper_command()[1]}
    return meta, rows
