"""What the benchmark scripts share: where results go, calibration images, timing, host facts, rows.

Imported by the scripts in this folder (`python benchmarks/NAME.py` puts the folder on sys.path).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REAL_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_facts() -> dict[str, Any]:
    """The host's CPU as every report names it (`mnv4_deploy.host`: model, int8 class, the int8-relevant
    features, any ISA cap set), plus each of ISA_FLAGS as true/false (as lscpu shows them)."""
    from mnv4_deploy.host import cpu_description

    described = cpu_description()
    present = set(described["int8_features"])
    return {"cpu": described["model_name"] or platform.processor() or platform.machine(), **described,
            "isa_flags": {f: f in present for f in ISA_FLAGS}}


def cpu_line(facts: dict[str, Any]) -> str:
    """One Markdown-ready line: model, the int8 class the rows were measured on, and the features."""
    from mnv4_deploy.host import one_line

    return one_line(facts)


def calibration_folder(tmp: Path, label: str | None = None) -> tuple[Path, str]:
    """The real photos beside the repository when present, else 32 synthetic colour fields in `tmp`.

    Returns the folder and how the result files describe it (`label` names the real folder;
    default: its full path).
    """
    if REAL_IMAGES.is_dir():
        return REAL_IMAGES, f"{label or REAL_IMAGES} (real photos)"
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp / "calib"
    folder.mkdir()
    for i in range(32):
        Image.fromarray(rng.uniform(0, 255, (2, 2, 3)).astype("uint8")).resize((256, 256)).save(folder / f"{i}.png")
    return folder, "32 synthetic colour fields"


def interleaved_latency(calls: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency (ms) of each call, run by run in turn so machine load hits all alike.

    Min, 10th percentile and median per call: on a shared machine trust the low ones.
    """
    for _ in range(warmup):  # thread pools, kernel packing
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {k: {"min_ms": float(np.min(v)), "p10_ms": float(np.percentile(v, 10)),
                "median_ms": float(np.median(v)), "runs": len(v)} for k, v in times.items()}


# ---- rows of an export's results, as the accuracy scripts tabulate them ----------------------

def result_row(result: Any) -> dict:
    """One target's result: status, size, cosine vs float and vs its emulation, accuracy, timings."""
    acc, parity, emu = result.accuracy or {}, result.parity or {}, result.emulation_parity or {}
    return {"target": result.target, "status": result.status, "precision": result.precision,
            "size_mb": round((result.size_bytes or 0) / 1e6, 3), "cosine_vs_float": parity.get("cosine"),
            "cosine_vs_emulation": emu.get("cosine"), "top1": acc.get("top1"), "drop_top1": acc.get("drop_top1"),
            "drop_ci95": acc.get("drop_top1_ci95"), "seconds_convert": result.seconds_convert,
            "seconds_validate": result.seconds_validate, "reason": result.reason}


def forecast_rows(result: Any) -> list[dict]:
    """The extra rows a converter judged beside its artifact (`extra_judgements`: the BPU's board forecasts)."""
    rows = []
    for judged in result.extra_judgements:
        acc, parity = judged.accuracy or {}, judged.parity or {}
        rows.append({"target": f"{result.target} [{judged.name}]", "status": "emulated here", "precision": judged.name,
                     "size_mb": None, "cosine_vs_float": parity.get("cosine"), "cosine_vs_emulation": None,
                     "top1": acc.get("top1"), "drop_top1": acc.get("drop_top1"),
                     "drop_ci95": acc.get("drop_top1_ci95"), "reason": judged.label})
    return rows


def per_image_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between row i of `a` and row i of `b` (two logit sets of the same images)."""
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def fmt(value: Any, spec: str) -> str:
    """`value` formatted by `spec`, or "-" when it was not measured."""
    return "-" if value is None else format(value, spec)
