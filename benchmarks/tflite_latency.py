"""LiteRT interpreter latency of every TFLite precision, side by side, written as JSON + Markdown.

    python benchmarks/tflite_latency.py [--model conv_small] [--size 224] [--runs 200]

One `mnv4_deploy.export` run builds `tflite`, `tflite-fp16`, `tflite-dynamic` and `tflite-int8`
(random init; calibration on ../shared/data/imagenet-samples when present, else synthetic
images) and validates them as usual. The timing then happens in a fresh child process (PyTorch
and litert-torch imports slow other work in the converting process): the LiteRT interpreter
with XNNPACK and 2 threads, batch 1, the models interleaved run by run so machine load hits all
alike; min, 10th percentile and median per model (on a shared machine trust the low ones).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_common import RESULTS, calibration_folder, cpu_facts, cpu_line, interleaved_latency

TARGETS = ("tflite", "tflite-fp16", "tflite-dynamic", "tflite-int8")
THREADS = 2


def measure(paths: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """Interleaved batch-1 latency (ms) of each model in the LiteRT interpreter (invoke only)."""
    from ai_edge_litert.interpreter import Interpreter

    calls = {}
    rng = np.random.default_rng(0)
    for name, path in paths.items():
        it = Interpreter(model_path=path, num_threads=THREADS)
        it.allocate_tensors()
        detail = it.get_input_details()[0]
        x = rng.standard_normal(detail["shape"]).astype(np.float32)
        if np.dtype(detail["dtype"]) != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])
        it.set_tensor(detail["index"], x)  # the input stays set: every run invokes on it
        calls[name] = it.invoke
    return interleaved_latency(calls, runs, warmup=5)


def _markdown(result: dict) -> str:
    lines = [f"# TFLite latency: {result['model']} at {result['size']} px, LiteRT interpreter "
             f"(XNNPACK, {THREADS} threads, batch 1)", "",
             f"Host: {result['host']}; {result['runs']} interleaved runs per model; calibration: "
             f"{result['calibration']}.", "",
             "| target | size MB | cosine vs float | SQNR dB | min ms | p10 ms | median ms | vs fp32 (median) |",
             "|---|---|---|---|---|---|---|---|"]
    base = result["latency"]["tflite"]["median_ms"]
    for name in TARGETS:
        lat, art = result["latency"][name], result["artifacts"][name]
        lines.append(f"| `{name}` | {art['size_bytes'] / 1e6:.2f} | {art['cosine']:.6f} | {art['sqnr_db']:.1f} | "
                     f"{lat['min_ms']:.2f} | {lat['p10_ms']:.2f} | {lat['median_ms']:.2f} | "
                     f"{base / lat['median_ms']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv_small")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # child mode: name=path ...
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(dict(item.split("=", 1) for item in args.measure), args.runs)))
        return
    from mnv4_deploy import export

    with tempfile.TemporaryDirectory() as tmp:
        calib, calib_text = calibration_folder(Path(tmp))
        out = Path(tmp) / "out"
        report = export(args.model, ",".join(TARGETS), out, img_size=args.size, calib_data=calib,
                        calib_size=args.calib_size, log=lambda _: None)
        results = {t: report.result(t) for t in TARGETS}
        failed = [t for t, r in results.items() if r.status != "passed"]
        if failed:
            sys.exit(f"not passed: {failed}: {[results[t].reason or results[t].failures for t in failed]}")
        child = [sys.executable, __file__, "--runs", str(args.runs), "--measure",
                 *(f"{t}={out / r.artifact}" for t, r in results.items())]
        latency = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    result = {"model": args.model, "size": args.size, "runs": args.runs, "threads": THREADS,
              "host": cpu_line(cpu_facts()), "cpu": cpu_facts(), "calibration": calib_text,
              "latency": latency,
              "artifacts": {t: {"size_bytes": r.size_bytes, "cosine": r.parity["cosine"],
                                "sqnr_db": r.parity["sqnr_db"], "runtime": r.runtime,
                                "emulation_cosine": (r.emulation_parity or {}).get("cosine")}
                            for t, r in results.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tflite_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "tflite_latency.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
