"""Build one RKNN bundle: the ONNX, the toolkit's build in its worker, where layers run, the files.

ONNX (int8: the plan's QDQ; fp16: the float model) -> worker `build` (config with the
contract's mean/std, load_onnx pinning the batch, build, export_rknn written atomically) ->
layer placement from the toolkit's table (`--strict` fails on a CPU fallback) -> the toolkit's
accuracy analysis on one image -> manifest, README, SHA256SUMS. The worker that built the
model stays up for the runner, so the simulator judges the very build the .rknn came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnv4_deploy.artifacts import sha256_path
from mnv4_deploy.errors import OpsOffAccelerator, UsageError
from mnv4_deploy.provenance import package_versions
from mnv4_deploy.registry import Artifact, ConvertJob

from . import bundle as bundle_files
from .layers import placement, placement_table
from .platforms import get_platform
from .run import BUILD_TIMEOUT_S, keep_live, session_log, to_pixels, toolkit_config
from .spelling import write_float_toolkit_onnx, write_toolkit_onnx
from .toolchain import open_session

if TYPE_CHECKING:
    from . import RknnConverter

OPSET = 17  # rknn-toolkit2 2.5.0 loads opsets up to 19; 17 is what the QDQ writer and OpenVINO use
ANALYSIS_IMAGES = 1  # the toolkit dumps every layer of every image as text (~100 MB per 224 px image)
SPELLING_WHY = ("rknn-toolkit2 re-rounds any tensor whose zero point is 0 onto a grid 128/127 coarser; weights are "
                "written with zero point -1 (the same values) and activation scales at zero point 0/128 times "
                "127/128 (the toolkit multiplies them back); every reader of an activation's DequantizeLinear gets its "
                "own copy (its compiler segfaults when it folds a shared one into a BatchNormalization); a Linear on a "
                "3-D/4-D input runs as a 2-D Gemm (its fused MatMul bias fails the build), and a float tensor constant "
                "beside an int8 activation gets an int8 grid (its float16 island crashes the compiler): "
                "converters/rknn/spelling.py, readers.py, linears.py, constant_operands.py")
NOT_REPRODUCIBLE = ("rknn-toolkit2 2.5.0 writes process memory (heap addresses) into the .rknn: two builds of the "
                    "same ONNX differ in about 1,600 bytes; the ONNX and every other bundle file are deterministic")


def _onnx(conv: "RknnConverter", job: ConvertJob, path: Path, full_integer: bool) -> dict[str, Any]:
    if conv.int8:
        from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx

        if job.plan is None:
            raise UsageError(f"target {conv.info.name} needs calibration images", "pass --calib-data DIR")
        plan = job.plan.with_quantized_output() if full_integer else job.plan
        plain = job.workdir / f".{path.stem}.plan-qdq.onnx"
        try:
            export_qdq_onnx(plan, plain, job.example, opset=OPSET, weight_dtype="int8")
            spelling = write_toolkit_onnx(plain, path)
        finally:
            plain.unlink(missing_ok=True)
        return {"source": "the run's int8 plan as QDQ ONNX (export_qdq_onnx, int8 weights)"
                          + (", logits quantized (full integer)" if full_integer else "")
                          + ", spelled so that rknn-toolkit2 keeps its numbers exactly",
                "toolkit_spelling": {**spelling, "why": SPELLING_WHY},
                "plan_sha256": plan.sha256, "float_layers": list(plan.float_layers)}
    from mnv4_deploy.converters.onnx import export_float_onnx

    export_float_onnx(job.model, job.example, path, OPSET, dynamic_batch=False, simplify=job.options.simplify)
    return {"source": "the canonical model's float ONNX (export_float_onnx)",
            "toolkit_spelling": write_float_toolkit_onnx(path)}


def _analysis_pixels(job: ConvertJob) -> np.ndarray:
    """Pixels of the first labeled (else calibration, else example) image, as the model takes them."""
    held = job.evaluation.batch.tensors if job.evaluation is not None else None
    source = held if held is not None and len(held) else (
        job.calibration.tensors if job.calibration is not None else job.example.numpy())
    config = toolkit_config(job.contract, job.options.rknn_platform, False)
    return to_pixels(np.asarray(source[:ANALYSIS_IMAGES], np.float32), config["mean"], config["std"])


def convert(conv: "RknnConverter", job: ConvertJob) -> Artifact:
    platform = get_platform(job.options.rknn_platform)
    full_integer = conv.int8 and not platform.float16
    path = (job.workdir / f"{job.stem}{conv.info.suffix}").resolve()  # the worker runs in another folder
    path.mkdir()
    onnx_file, rknn_file = f"{job.stem}.onnx", f"{job.stem}.rknn"
    source = _onnx(conv, job, path / onnx_file, full_integer)
    config = toolkit_config(job.contract, platform.name, conv.int8)
    session = open_session(conv.info.name, session_log(conv.info.name), job.options.rknn_python)
    try:
        job.log(f"{conv.info.name}: rknn-toolkit2 {session.hello.get('rknn_toolkit2')} builds {onnx_file} for "
                f"{platform.name}")
        build_args = {"onnx": str(path / onnx_file), "input_name": "input", "input_shape": list(job.example.shape),
                      "rknn_out": str(path / rknn_file), **config}
        built, _ = session.call("build", build_args, timeout=BUILD_TIMEOUT_S)
        placed = placement(built["layer_table"])
        table = placement_table(placed, f"{conv.info.name} ({platform.name})")
        job.log(table.splitlines()[0])
        if job.options.strict and not placed["fully_on_npu"]:
            raise OpsOffAccelerator(f"{conv.info.name}: {len(placed['off_npu'])} layer(s) leave the NPU, the first "
                                    f"{placed['off_npu'][0]['op']} {placed['off_npu'][0]['name']}",
                                    "drop --strict to export with CPU fallbacks")
        board = {"target": platform.name, "device_id": job.options.rknn_device} if job.options.rknn_device else {}
        analysis, _ = session.call("accuracy_analysis", board, {"x": _analysis_pixels(job)}, timeout=BUILD_TIMEOUT_S)
        manifest = {
            "target": conv.info.name, "platform": platform.name, "boards": platform.boards,
            "precision": conv.info.precision, "toolkit": built["toolkit"], "full_integer": full_integer,
            "model": {k: job.model_info[k] for k in ("name", "timm_name", "weights_sha256") if k in job.model_info},
            "num_classes": int(job.model(job.example).shape[-1]), "contract": job.contract.to_dict(),
            "input": {"name": "input", "shape": list(job.example.shape), "feed": "0-255 RGB pixels"},
            "config": {"mean_values": config["mean"], "std_values": config["std"], "target_platform": platform.name,
                       "optimization_level": config["optimization_level"]},
            "onnx": {"file": onnx_file, "sha256": sha256_path(path / onnx_file), "opset": OPSET, **source},
            "rknn": {"file": rknn_file, "sha256": sha256_path(path / rknn_file), "bytes": built["rknn_bytes"]},
            "placement": placed, "versions": package_versions()}
        bundle_files.write_manifest(path, manifest)
        (path / bundle_files.README).write_text(bundle_files.readme(job.stem, manifest))
        bundle_files.write_sums(path)
    except BaseException:
        session.close()
        raise
    device = job.options.rknn_device
    if device is None:
        keep_live(manifest["rknn"]["sha256"], session)
    else:
        session.close()
    meta = {"platform": platform.name, "toolkit": built["toolkit"], "full_integer": full_integer,
            "onnx": manifest["onnx"], "rknn": manifest["rknn"], "placement": placed, "details_table": table,
            "accuracy_analysis": _analysis_summary(analysis), "toolkit_warnings": built["warnings"],
            "rknn_device": device, "reproducible": False, "reproducible_reason": NOT_REPRODUCIBLE,
            "notes": [_where_judged(platform.name, device, placed)]}
    emulation = None
    if conv.int8:
        emulation = (job.plan.with_quantized_output() if full_integer else job.plan).emulation()
    return Artifact(conv.info.name, path, conv.info.precision, meta, emulation=emulation)


def _where_judged(platform: str, device: str | None, placed: dict[str, Any]) -> str:
    """The report's note: where the figures come from, and the CPU fallbacks."""
    where = f"judged on a {platform} board (adb {device})" if device else \
        f"judged in Rockchip's x86 simulator ({platform}), not on a board"
    off = placed["off_npu"]
    return where + (f"; {len(off)} layer(s) on the CPU" if off else "; every layer on the NPU")


def _analysis_summary(analysis: dict[str, Any]) -> dict[str, Any]:
    """The toolkit's per-layer report as evidence (its text), or why it did not run."""
    if not analysis.get("ran"):
        return {"ran": False, "reason": analysis.get("reason"),
                "note": "rknn-toolkit2 runs accuracy_analysis on a QDQ (QAT) model only against a board: pass "
                        "--rknn-device ID" if "need set 'target'" in str(analysis.get("reason")) else None}
    return {"ran": True, "on": f"{ANALYSIS_IMAGES} image(s)", "report": analysis.get("text", "")}
