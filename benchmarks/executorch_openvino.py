"""Latency of fp32 vs int8 in four runtimes: ExecuTorch, OpenVINO, onnxruntime and LiteRT.

    python benchmarks/executorch_openvino.py [--models conv_small,conv_medium] [--size 224] [--runs 100]

Per model, one `mnv4_deploy.export` run builds `executorch`, `executorch-int8`, `openvino`,
`openvino-int8`, `onnx`, `onnx-int8`, `tflite` and `tflite-int8` from one int8 plan (random
init; calibration on ../shared/data/imagenet-samples when present, else synthetic images) and
validates them as usual. Timing then happens per runtime in its own fresh child process (no
PyTorch conversion state, one runtime's thread pool at a time): batch 1, 2 threads, the fp32
and int8 artifact interleaved run by run so machine load hits both alike; min, 10th percentile
and median. The host's CPU model and ISA flags (VNNI decides whether int8 can be fast on x86)
go into the result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench_common import RESULTS, calibration_folder, cpu_facts, cpu_line, interleaved_latency

PAIRS = {"executorch": ("executorch", "executorch-int8"), "openvino": ("openvino", "openvino-int8"),
         "onnxruntime": ("onnx", "onnx-int8"), "litert": ("tflite", "tflite-int8")}
THREADS = 2


# ---- child side: one runtime, two artifacts -------------------------------------------------
def _ort(path: str) -> Callable[[], Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, *session.get_inputs()[0].shape[1:])).astype(np.float32)
    return lambda: session.run(None, {name: x})


def _litert(path: str) -> Callable[[], Any]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=THREADS)
    it.allocate_tensors()
    detail = it.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(detail["shape"]).astype(np.float32)

    def run() -> None:
        it.set_tensor(detail["index"], x)
        it.invoke()

    return run


def _executorch(path: str) -> Callable[[], Any]:
    import torch

    from mnv4_deploy.converters.executorch.runtime import load_program, set_threads

    set_threads(THREADS)
    program = load_program(Path(path))
    method = program.load_method("forward")
    x = torch.randn(*program.metadata("forward").input_tensor_meta(0).sizes(), generator=torch.Generator().manual_seed(0))
    return lambda: method.execute([x])


def _openvino(path: str) -> Callable[[], Any]:
    from mnv4_deploy.converters.openvino.ir import compile_ir

    compiled = compile_ir(Path(path), threads=THREADS)
    request = compiled.create_infer_request()
    shape = [d.get_length() if d.is_static else 1 for d in compiled.inputs[0].get_partial_shape()]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return lambda: request.infer({0: x})


LOADERS = {"onnxruntime": _ort, "litert": _litert, "executorch": _executorch, "openvino": _openvino}


def measure(runtime: str, paths: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    """Interleaved batch-1 latency (ms) of each artifact in one runtime."""
    return interleaved_latency({name: LOADERS[runtime](path) for name, path in paths.items()}, runs, warmup=10)


# ---- parent side ----------------------------------------------------------------------------
def export_model(model: str, size: int, calib: Path, calib_size: int, out: Path) -> dict[str, Any]:
    from mnv4_deploy import export

    targets = [t for pair in PAIRS.values() for t in pair]
    started = time.perf_counter()
    report = export(model, ",".join(targets), out, img_size=size, calib_data=calib, calib_size=calib_size,
                    log=lambda _: None)
    results = {t: report.result(t) for t in targets}
    failed = {t: (r.reason or r.failures) for t, r in results.items() if r.status != "passed"}
    if failed:
        sys.exit(f"{model}: not passed: {failed}")
    return {"seconds": round(time.perf_counter() - started, 1),
            "artifacts": {t: {"path": str(out / r.artifact), "size_bytes": r.size_bytes,
                              "cosine": r.parity["cosine"], "sqnr_db": r.parity["sqnr_db"],
                              "emulation_cosine": (r.emulation_parity or {}).get("cosine"),
                              "emulation_sqnr_db": (r.emulation_parity or {}).get("sqnr_db"),
                              "seconds_convert": r.seconds_convert, "runtime": r.runtime}
                          for t, r in results.items()}}


def time_model(artifacts: dict[str, Any], runs: int, load: list[float]) -> dict[str, Any]:
    """Each runtime's pair in its own child process; `load` collects the 1-minute load average before each."""
    latency = {}
    for runtime, pair in PAIRS.items():
        load.append(round(os.getloadavg()[0], 1))
        child = [sys.executable, __file__, "--runs", str(runs), "--measure", runtime,
                 *(f"{t}={artifacts[t]['path']}" for t in pair)]
        proc = subprocess.run(child, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"timing {runtime} failed: {proc.stderr.strip().splitlines()[-1:]}")
        latency.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return latency


def _markdown(result: dict) -> str:
    lines = [f"# fp32 vs int8 latency in four runtimes ({result['size']} px, batch 1, {THREADS} threads)", "",
             f"Measured on: {cpu_line(result['host'])}; {result['runs']} interleaved runs per pair, each runtime in "
             f"its own process; calibration: {result['calibration']} ({result['calib_size']} images); random-init "
             "weights (latency and parity only, no accuracy meaning).", "",
             "| model | runtime | target | size MB | cosine vs float | cosine vs plan | min ms | p10 ms | median ms | "
             "int8 / fp32: min, p10, median |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, entry in result["models"].items():
        for runtime, (fp32, int8) in PAIRS.items():
            base = entry["latency"][fp32]
            for target in (fp32, int8):
                lat, art = entry["latency"][target], entry["artifacts"][target]
                emu = f"{art['emulation_cosine']:.6f}" if art["emulation_cosine"] is not None else "-"
                ratio = ", ".join(f"{lat[k] / base[k]:.2f}" for k in ("min_ms", "p10_ms", "median_ms")) \
                    if target == int8 else "-"
                lines.append(f"| {model} | {runtime} | `{target}` | {art['size_bytes'] / 1e6:.2f} | "
                             f"{art['cosine']:.6f} | {emu} | {lat['min_ms']:.2f} | {lat['p10_ms']:.2f} | "
                             f"{lat['median_ms']:.2f} | {ratio} |")
    load = result.get("load_average")
    lines += ["", f"1-minute load average of the host while timing: {load} (a shared machine: on a busy host trust "
              "the min and p10 columns; medians then measure the contention)." if load else
              "Load average not recorded by this run (see the README for what the host was doing)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="conv_small,conv_medium")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # child mode: RUNTIME name=path ...
    args = parser.parse_args()
    if args.measure:
        runtime, *items = args.measure
        print(json.dumps(measure(runtime, dict(item.split("=", 1) for item in items), args.runs)))
        return
    models: dict[str, Any] = {}
    load: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        calib, calib_text = calibration_folder(Path(tmp), label="imagenet-samples")
        for model in args.models.split(","):
            entry = export_model(model, args.size, calib, args.calib_size, Path(tmp) / model)
            entry["latency"] = time_model(entry["artifacts"], args.runs, load)
            for art in entry["artifacts"].values():
                art.pop("path")
            models[model] = entry
            print(f"{model}: exported in {entry['seconds']} s, timed", file=sys.stderr)
    result = {"size": args.size, "runs": args.runs, "threads": THREADS, "calib_size": args.calib_size,
              "calibration": calib_text, "host": cpu_facts(), "load_average": load, "models": models}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executorch_openvino.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "executorch_openvino.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
