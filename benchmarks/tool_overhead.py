"""Wall time of the full benchmark matrix for one model, and where it goes: our code or the converters.

    python benchmarks/tool_overhead.py [--model conv_small] [--img-size 224] [--calib-size 64]
                                       [--calib-data DIR] [--targets installed] [--profile]

Runs `mnv4_deploy.benchmark.run_matrix` in-process (the same code as `mnv4-deploy benchmark`)
and splits its wall time by pipeline stage, from the step timers the pipeline reports:
- our pipeline: load + random-init BN re-estimation + canonicalize + fold check + reference
  logits, calibration images, the int8 plan (with its sensitivity ranking), bookkeeping
  (hashing, atomic moves, reports) - computed once per model and shared by every target;
- inside converters: each target's `convert()` (torch.onnx/onnxsim, litert-torch/TF,
  coremltools, the QDQ emitter...);
- running artifacts: validation in each runtime, and the latency timing.
`--profile` adds cProfile self time grouped by top-level package (the profiler slows
Python-heavy code, so its wall time is not the headline). Writes results/tool_overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from mnv4_deploy.host import cpu_description

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
KNOWN = ("torch", "timm", "numpy", "onnxruntime", "onnxsim", "onnxscript", "onnx", "tensorflow", "litert_torch",
         "ai_edge_litert", "ai_edge_quantizer", "coremltools", "PIL", "google", "jax", "yaml")


def _package(filename: str, func: str) -> str:
    """Top-level package of a profiled function (C built-ins by the module named in their repr)."""
    for ours in ("mnv4_deploy", "converters"):
        if f"{REPO}/{ours}/" in filename:
            return f"{ours} (ours)"
    match = re.search(r"site-packages/([A-Za-z0-9_]+)", filename)
    if match:
        return match.group(1)
    if filename.startswith("~") or filename == "":
        for name in KNOWN:
            if re.search(rf"\b{name}\b", func):
                return name
        return "C built-ins (other)"
    return "python stdlib"


def by_package(profile: cProfile.Profile) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in pstats.Stats(profile).stats.items():
        totals[_package(filename, func)] += tottime
    return dict(sorted(((k, round(v, 2)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def stage_split(run, wall: float) -> dict[str, float]:
    """Seconds per stage from the pipeline's step timers and each target's convert/validate times."""
    phases = run.merged.get("phases") or []
    convert = sum(r.seconds_convert or 0 for rep in run.reports for r in rep.results)
    validate = sum(r.seconds_validate or 0 for rep in run.reports for r in rep.results)
    latency = sum(p["seconds"] for p in phases if " latency " in f" {p['step']} ")
    shared = {name: sum(p["seconds"] for p in phases if p["step"].endswith(name))
              for name in ("prepare model", "calibration images", "evaluation reference", "int8 plan")}
    ranking = sum((rep.quantization or {}).get("sensitivity_seconds", 0) for rep in run.reports)
    if ranking:  # part of the int8 plan step: shown on its own, it is optional (--sensitivity-images 0)
        shared["int8 plan"] -= ranking
        shared["int8 sensitivity ranking (report only)"] = ranking
    ours_shared = sum(shared.values())
    bookkeeping = wall - ours_shared - convert - validate - latency
    return {**{f"ours: {k}": round(v, 2) for k, v in shared.items() if v},
            "ours: bookkeeping (hashes, moves, reports, merge)": round(bookkeeping, 2),
            "converters: convert()": round(convert, 2), "runtimes: validation": round(validate, 2),
            "runtimes: latency timing": round(latency, 2)}


def main() -> int:
    started_process = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv_small")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--calib-data", type=Path, default=SAMPLES)
    ap.add_argument("--targets", default="installed", help="comma-separated, or installed (every registered target "
                    "whose backend is installed)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="also group cProfile self time by package")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    import torch

    from mnv4_deploy.benchmark import MatrixSpec, run_matrix
    from mnv4_deploy.progress import PLAIN, Progress
    from mnv4_deploy.registry import target_rows

    imports = time.perf_counter() - started_process
    targets = ([r["target"] for r in target_rows() if r["installed"]] if args.targets == "installed"
               else args.targets.split(","))
    work = REPO / "build" / "tool_overhead"  # artifacts: git-ignored, beside the results
    spec = MatrixSpec(models=(args.model,), targets=tuple(targets), out=work, img_size=args.img_size,
                      calib_data=args.calib_data, calib_size=args.calib_size, runs=args.runs)
    profile = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if profile:
        profile.enable()
    run = run_matrix(spec, Progress(mode=PLAIN))
    if profile:
        profile.disable()
    wall = time.perf_counter() - t0
    stages = stage_split(run, wall)
    ours = sum(v for k, v in stages.items() if k.startswith("ours"))
    result = {
        "model": args.model, "img_size": args.img_size, "calib_size": args.calib_size, "targets": targets,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "host": cpu_description(),
        "python": sys.version.split()[0], "profiled": bool(profile), "host_at_end": run.merged.get("host"),
        "import_seconds": round(imports, 2), "matrix_wall_seconds": round(wall, 2),
        "stages_seconds": stages,
        "share": {"ours": round(ours / wall, 3),
                  "converters": round(stages["converters: convert()"] / wall, 3),
                  "runtimes": round((stages["runtimes: validation"] + stages["runtimes: latency timing"]) / wall, 3)},
        "per_target": [{"target": r.target, "status": r.status, "convert_s": r.seconds_convert,
                        "validate_s": r.seconds_validate, "latency_ms": (r.latency or {}).get("median_ms")}
                       for rep in run.reports for r in rep.results],
        "exit_code": run.exit_code,
    }
    if profile:
        result["profile_self_seconds_by_package"] = by_package(profile)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tool_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "tool_overhead.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    wall = r["matrix_wall_seconds"]
    lines = [f"# Tool overhead: {r['model']} at {r['img_size']}, {len(r['targets'])} targets, "
             f"{r['calib_size']} calibration images", "",
             f"Matrix wall time {wall:.1f} s (+ {r['import_seconds']:.1f} s imports), torch threads "
             f"{r['torch_threads']}, {'profiled (cProfile on: slower)' if r['profiled'] else 'not profiled'}, "
             f"1-min load average at the end {(r.get('host_at_end') or {}).get('loadavg_1m')} on "
             f"{(r.get('host_at_end') or {}).get('cpus')} cores. "
             f"Share: our pipeline {100 * r['share']['ours']:.0f}%, inside converters "
             f"{100 * r['share']['converters']:.0f}%, running artifacts {100 * r['share']['runtimes']:.0f}%.", "",
             "| stage | seconds | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * v / wall:.0f}% |" for k, v in r["stages_seconds"].items()]
    lines += ["", "| target | status | convert s | validate s | latency ms |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['status']} | {t['convert_s']} | {t['validate_s']} | {t['latency_ms']} |"
              for t in r["per_target"]]
    if r.get("profile_self_seconds_by_package"):
        lines += ["", "cProfile self time by package (top 12):", "", "| package | self s |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in list(r["profile_self_seconds_by_package"].items())[:12]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
