"""What the board will compute, measured here before anyone runs the vendor toolchain.

Two effects separate the bundle's float ONNX from the BPU: the NV12 input (8-bit BT.601 YUV
with 4:2:0 chroma, see `nv12`) and int8 quantization. The int8 side is emulated with our own
engine and the `bpu` recipe (symmetric per-channel int8 weights, per-tensor symmetric int8
activations, quantized output), calibrated on the bundle's own calibration files, exported as
QDQ ONNX and run in onnxruntime. Each variant is compared with the float reference on the
run's labeled set (top-1/top-5, drop) or, without one, on the calibration images (cosine).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnv4_deploy.batches import Run, run_chunked
from mnv4_deploy.preprocess import Preprocess

from . import nv12

BPU_RECIPE = "bpu"
NO_LABEL_IMAGES = 32  # calibration images the cosine is measured on when there is no labeled set


def to_pixels(contract: Preprocess, tensors: np.ndarray) -> np.ndarray:
    """Normalized NCHW tensors -> the 8-bit RGB pixels (as float32 0-255) they were made from.

    Exact for tensors the contract made from image files (their pixels are integers); other
    inputs are rounded to the 8-bit levels a camera would deliver.
    """
    mean = np.asarray(contract.mean, np.float64).reshape(1, 3, 1, 1) * 255.0
    std = np.asarray(contract.std, np.float64).reshape(1, 3, 1, 1) * 255.0
    return np.clip(np.rint(tensors.astype(np.float64) * std + mean), 0, 255).astype(np.float32)


def nv12_tensors(contract: Preprocess, tensors: np.ndarray, space: str = "regular") -> np.ndarray:
    """The model input the board produces for these images: pixels -> NV12 -> RGB -> contract."""
    return contract.normalize(nv12.rgb_nv12_roundtrip(to_pixels(contract, tensors), space))


@dataclass(frozen=True)
class Sample:
    """The images a forecast is measured on, with the float reference's logits on them."""

    tensors: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None
    source: str  # "evaluation" | "calibration"


def sample_from(evaluation: Any, calib_tensors: np.ndarray, float_run: Run) -> Sample:
    """The labeled set when the run has one, else the first calibration images (cosine only)."""
    if evaluation is not None:
        return Sample(evaluation.batch.tensors, evaluation.reference_logits, evaluation.batch.labels, "evaluation")
    tensors = calib_tensors[:NO_LABEL_IMAGES]
    return Sample(tensors, run_chunked(float_run, tensors), None, "calibration")


def measure(name: str, label: str, run: Run, tensors: np.ndarray, sample: Sample) -> dict[str, Any]:
    """One variant's row: parity with the reference and, with labels, the paired accuracy."""
    from mnv4_deploy.validate import accuracy, compare

    logits = run_chunked(run, tensors)
    row: dict[str, Any] = {"name": name, "label": label, "images": int(len(tensors)), "on": sample.source,
                           "parity": compare(sample.reference, logits).to_dict(), "accuracy": None}
    if sample.labels is not None:
        row["accuracy"] = accuracy(sample.reference, logits, sample.labels).to_dict()
    return row


def build_int8(model: Any, calib_tensors: np.ndarray, example: Any, path: Path,
               log: Callable[[str], None]) -> tuple[Run, dict[str, Any]]:
    """Plan with the `bpu` recipe, write it as QDQ ONNX to `path`, return its ORT runner and facts."""
    from mnv4_deploy.converters.onnx import ort_runner
    from mnv4_deploy.quant import build_plan
    from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx
    from mnv4_deploy.recipes import load_recipe

    recipe = load_recipe(BPU_RECIPE)
    plan = build_plan(model, np.ascontiguousarray(calib_tensors, dtype=np.float32), recipe, log=lambda _: None)
    export_qdq_onnx(plan, path, example, opset=13)
    counts = plan.to_dict().get("counts", {})
    log(f"bpu int8 emulation: recipe {recipe.name}, {len(calib_tensors)} calibration files")
    return ort_runner(path).run, {"recipe": recipe.name, "calibration_images": int(len(calib_tensors)),
                                  "layers": counts.get("layers"), "settings": recipe.to_dict()["activations"]}


def forecasts(float_run: Run, int8_run: Run, contract: Preprocess, sample: Sample, input_type_rt: str) -> list[dict]:
    """Float on NV12 input, int8 on contract input and, for an NV12 board, int8 on NV12 input."""
    rows = []
    if input_type_rt == "nv12":
        board = nv12_tensors(contract, sample.tensors)
        rows.append(measure("nv12", "float, NV12 BT.601 input", float_run, board, sample))
    rows.append(measure("int8", "emulated int8 (bpu recipe)", int8_run, sample.tensors, sample))
    if input_type_rt == "nv12":
        rows.append(measure("int8+nv12", "emulated int8, NV12 input (the board)", int8_run, board, sample))
    return rows


def readme_results(float_row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """The numbers the bundle README states (keys of `readme.RESULT_ROWS`)."""
    by_name = {r["name"]: r for r in rows}
    board = by_name.get("int8+nv12") or by_name["int8"]
    acc = float_row.get("accuracy")

    def top(row: dict | None, key: str) -> float | None:
        return None if row is None or row.get("accuracy") is None else row["accuracy"][key]

    return {
        "float_top1": acc["top1"] if acc else None,
        "float_top5": acc["top5"] if acc else None,
        "nv12_top1": top(by_name.get("nv12"), "top1"),
        "nv12_cosine": by_name["nv12"]["parity"]["cosine"] if "nv12" in by_name else None,
        "int8_top1": top(by_name.get("int8+nv12"), "top1"),
        "int8_contract_top1": top(by_name["int8"], "top1"),
        "int8_cosine": board["parity"]["cosine"],
        "images": float_row["images"] if acc else None,
    }
