"""Batch-1 latency of the onnxruntime runner with its intra-op threads spinning vs sleeping between runs.

    python benchmarks/ort_spinning.py [--artifacts /tmp/mnv4-eval-scale/artifacts] [--rounds 3] [--runs 300]

The runner's sessions sleep (validation and evaluation share the cores with decode workers and the
reference); latency measurements time its spinning variant (`Runner.latency_variant`). This script
says what sleeping would cost a latency number, for the eval-scale benchmark's conv_small 224 px
`onnx` and `onnx-int8` artifacts (`benchmarks/eval_scale.py` exports them), two ways:
- interleaved: all four sessions in one process, run by run in turn (`bench_common.interleaved_latency`);
  a spinning session's threads still spin while the next session runs, which charges the sleeping one;
- separate: one process per artifact and setting, alternating, `--rounds` times, so no session sees
  another's threads.
Prints one JSON object (results/ort_spinning.json: a run at load 2.6, ort_spinning_load3.json: at
load 3.1-3.4); the 1-min load average is recorded beside each measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = {"onnx": "conv_small.onnx", "onnx-int8": "conv_small.int8.onnx"}


def _calls(folder: Path, targets: tuple[str, ...], spinning: tuple[bool, ...]) -> dict:
    """One batch-1 call per artifact and spinning setting, through the runner's own session builder."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from mnv4_deploy.converters.onnx import ort_runner

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    calls = {}
    for target in targets:
        for spin in spinning:
            run = ort_runner(folder / ARTIFACTS[target], spinning=spin).run
            calls[f"{target} {'spinning' if spin else 'sleeping'}"] = lambda run=run: run(x)
    return calls


def _measure(calls: dict, runs: int) -> dict:
    from bench_common import interleaved_latency

    load = round(os.getloadavg()[0], 1)
    timed = interleaved_latency(calls, runs=runs, warmup=10)
    return {k: {"load": load, **{m: round(v, 3) for m, v in r.items() if m != "runs"}} for k, r in timed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/mnv4-eval-scale/artifacts"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--child", choices=("spinning", "sleeping"))
    parser.add_argument("--target", choices=tuple(ARTIFACTS))
    args = parser.parse_args()
    missing = [f for f in ARTIFACTS.values() if not (args.artifacts / f).is_file()]
    if missing:
        raise SystemExit(f"{args.artifacts}: no {', '.join(missing)} (run benchmarks/eval_scale.py first)")
    if args.child:
        print(json.dumps(_measure(_calls(args.artifacts, (args.target,), (args.child == "spinning",)), args.runs)))
        return
    result = {"runs": args.runs, "separate": [],
              "interleaved": _measure(_calls(args.artifacts, tuple(ARTIFACTS), (True, False)), args.runs)}
    for _ in range(args.rounds):
        for target in ARTIFACTS:
            for setting in ("spinning", "sleeping"):
                out = subprocess.run([sys.executable, __file__, "--artifacts", str(args.artifacts), "--runs",
                                      str(args.runs), "--child", setting, "--target", target],
                                     capture_output=True, text=True, check=True)
                result["separate"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
