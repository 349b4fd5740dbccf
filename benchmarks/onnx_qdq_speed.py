"""INT8 QDQ ONNX vs FP32 ONNX latency in onnxruntime (CPU), written as JSON + Markdown.

    python benchmarks/onnx_qdq_speed.py [--model conv_small] [--size 224] [--threads 2]

The network is random-init with BatchNorm re-estimated on synthetic images (speed does not
depend on the weights' values). Both models run in the same process, interleaved run by
run, batch 1, so machine load affects both alike; min, 10th percentile and median are
reported (on a shared machine the low percentiles are the ones to trust). The int8
model is what `export_qdq_onnx` writes ("auto" weight dtype) for 8-bit weights and for
`weights.dense_bits: 7` (depthwise layers keep 8 bits), and, for comparison on hosts
without VNNI, 8-bit int8 weights (fast but saturating there; see onnx_qdq.py).
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench_common import cpu_facts, cpu_line
from mnv4_deploy.canonicalize import canonicalize
from mnv4_deploy.data import synthetic_batch
from mnv4_deploy.models import build, contract_for, recalibrate_batchnorm, resolve
from mnv4_deploy.quant import build_plan
from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx, host_weight_dtype, ort_session

RECIPE = {"calibration": {"size": 32, "batch_size": 16, "correction_size": 16},
          "weights": {"bits": 8}, "activations": {"estimator": "minmax"},
          "equalization": False, "bias_correction": False, "parity": {}}


def _time(sessions: dict, x: np.ndarray, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():  # warm-up
        for _ in range(3):
            s.run(None, {"input": x})
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv_small")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    spec = resolve(args.model, img_size=args.size)
    model = build(spec)
    calib = synthetic_batch(contract_for(spec), 32, seed=0).tensors
    recalibrate_batchnorm(model, [torch.from_numpy(calib[i:i + 8]) for i in range(0, 32, 8)])
    canonical, _ = canonicalize(model, torch.from_numpy(calib[:1]))
    plan = build_plan(canonical, calib, RECIPE, log=lambda _: None)
    dense7 = {**RECIPE, "weights": {"bits": 8, "dense_bits": 7}}
    plan7 = build_plan(canonical, calib, dense7, log=lambda _: None)
    example = torch.from_numpy(calib[:1])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": Path(tmp) / "fp32.onnx"}
        torch.onnx.export(canonical, (example,), str(paths["fp32"]), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
        auto = host_weight_dtype()
        paths[f"int8, 8-bit weights ({auto})"] = export_qdq_onnx(plan, Path(tmp) / "int8_auto.onnx", example)
        paths["int8, dense 7-bit / dw 8-bit weights (int8)"] = export_qdq_onnx(plan7, Path(tmp) / "int8_d7.onnx",
                                                                             example)
        if auto != "int8":
            paths["int8, 8-bit weights (int8; saturates here)"] = export_qdq_onnx(
                plan, Path(tmp) / "int8_s8.onnx", example, weight_dtype="int8")
        ops = {}
        sessions = {}
        for k, p in paths.items():
            opt = Path(tmp) / f"opt_{p.name}"
            sessions[k] = ort_session(p, args.threads, optimized_path=opt)
            import onnx

            ops[k] = dict(collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node))
        times = _time(sessions, calib[:1], args.runs)
    fp32 = times["fp32"]
    rows = []
    for k, t in times.items():
        rows.append({"model": k, "min_ms": round(min(t), 3), "p10_ms": round(float(np.percentile(t, 10)), 3),
                     "median_ms": round(float(np.median(t)), 3),
                     "speedup_min": round(min(fp32) / min(t), 3),
                     "speedup_p10": round(float(np.percentile(fp32, 10) / np.percentile(t, 10)), 3),
                     "speedup_median": round(float(np.median(fp32) / np.median(t)), 3),
                     "int8_over_fp32_median": round(float(np.median(t) / np.median(fp32)), 3)})
    host = cpu_facts()
    result = {"model": spec.timm_name, "size": args.size, "threads": args.threads, "batch": 1, "runs": args.runs,
              "machine": platform.machine(), "avx512_vnni": host["isa_flags"]["avx512_vnni"],
              "avx2": host["isa_flags"]["avx2"], "host": host, "onnxruntime_ops": ops, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"onnx_qdq_speed_{args.model}_{args.size}_t{args.threads}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# INT8 QDQ vs FP32 ONNX: {spec.timm_name} at {args.size}, batch 1, {args.threads} threads",
             "", f"Measured on: {cpu_line(host)}", "",
             "| model | min ms | p10 ms | median ms | speed-up (min / p10 / median) |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['min_ms']} | {r['p10_ms']} | {r['median_ms']} | "
              f"{r['speedup_min']}x / {r['speedup_p10']}x / {r['speedup_median']}x |" for r in rows]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
