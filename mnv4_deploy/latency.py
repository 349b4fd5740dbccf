"""Latency of an artifact in its host runtime: batch of 1, warm-up, then the median of N runs.

Timed through the converter's own Runner (the same code path validation used), so the
number includes what a user of that runtime pays per image here, layout transposes included.
It is a host number: an int8 model's speed on a phone NPU is not measured here.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .registry import Artifact, Converter, NotRunnable


MIN_RUNS = 3
BUDGET_S = 5.0  # stop timing a slow runtime (e.g. a reference executor) after this long


def time_run(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], warmup: int = 3,
             runs: int = 20, seed: int = 0, budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Median/p90 milliseconds and FPS of `run` on one seeded (1, C, H, W) input.

    Stops early (after at least MIN_RUNS) once the timed runs exceed `budget_s`, so a 1 s/image
    reference executor does not dominate a matrix; `runs` in the result says how many counted.
    """
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        run(x)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= MIN_RUNS and time.perf_counter() - started > budget_s:
            break
    times.sort()
    median = statistics.median(times)
    return {"median_ms": round(median, 3), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
            "min_ms": round(times[0], 3), "fps": round(1e3 / median, 1) if median > 0 else None,
            "runs": len(times), "warmup": warmup, "batch": 1}


def artifact_latency(conv: Converter, path: Path, precision: str, metadata: dict[str, Any],
                     crop_size: tuple[int, int], warmup: int = 3, runs: int = 20) -> dict[str, Any]:
    """Time one artifact, or say why it cannot be timed on this host."""
    runner = conv.runner(Artifact(conv.info.name, path, precision, metadata=dict(metadata)))
    if isinstance(runner, NotRunnable):
        return {"note": f"not runnable here: {runner.reason}"}
    if runner.latency_variant is not None:
        runner = runner.latency_variant()
    timing = time_run(runner.run, (1, 3, *crop_size), warmup, runs)
    return {**timing, "runtime": runner.runtime}
