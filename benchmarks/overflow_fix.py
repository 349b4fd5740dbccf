"""What the x86 int8 overflow fix costs, and what it saves, on real ImageNet weights, beside NNCF's.

    python benchmarks/overflow_fix.py [--work DIR] [--out benchmarks/results]

EfficientNet-Lite1 (the `bench` extra's ImageNet weights), the `split_samples.py` split of
../shared/data/imagenet-samples (200 calibration photos, 800 held out). For each overflow-fix mode
of our plan (`off`, `auto`, `all`: quant/overflow.py) the plan's emulation is run on the 800
photos, and its `openvino-int8` IR in OpenVINO's CPU plugin twice: with the host's kernels and
with oneDNN capped at AVX2 (`ONEDNN_MAX_CPU_ISA`), the u8 x s8 kernels of x86 CPUs without VNNI.
NNCF's own int8 of the same model (`nncf.quantize` on the OpenVINO model, default preset, same
200 preprocessed images) is run the same two ways for each of its `overflow_fix` settings
(disable, first_layer_only: its default, enable). Every row: top-1, the paired drop against float with
its 95% interval, top-1 flips against float (images whose class differs from float's) and the
per-image cosine against float. Finished phases are kept in `--work`, so an interrupted run
resumes; the host's CPU (int8 class, features) is recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import cpu_facts, cpu_line  # noqa: E402
from real_imagenet import CALIB_COUNT, MODEL, WEIGHTS_FOR, _cached, log, openvino_logits  # noqa: E402
from split_samples import DEFAULT_SOURCE, split  # noqa: E402

MODES = ("off", "auto", "all")
NNCF_FIXES = ("disable", "first_layer_only", "enable")  # nncf OverflowFix values; first_layer_only is its default
KERNELS = {"host": "this host's kernels", "avx2": "oneDNN capped at AVX2 (x86 without VNNI)"}


def _metrics(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from mnv4_deploy.validate import accuracy

    acc = accuracy(reference, logits, labels).to_dict()
    cosine = (reference * logits).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(logits, axis=1))
    return {"top1": acc["top1"], "drop_top1": acc["drop_top1"], "drop_ci95": acc["drop_top1_ci95"],
            "flips_vs_float": int((reference.argmax(1) != logits.argmax(1)).sum()),
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}


def _capped_logits(xml: Path, x: np.ndarray) -> np.ndarray:
    from mnv4_deploy.converters.openvino.ir import capped_ir_runner

    return capped_ir_runner(xml).run(x).reshape(len(x), -1)


def _kernels(xml: Path, x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    return {"host": lambda: openvino_logits(xml, x), "avx2": lambda: _capped_logits(xml, x)}


def our_rows(work: Path, prepared: Any, calib: np.ndarray, x: np.ndarray, labels: np.ndarray,
             reference: np.ndarray) -> list[dict]:
    """Each mode: the plan's emulation, and its openvino-int8 IR on both kernel classes."""
    import torch

    from mnv4_deploy.converters.openvino.ir import onnx_to_ir
    from mnv4_deploy.batches import run_chunked
    from mnv4_deploy.quant import build_plan
    from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx

    rows = []
    for mode in MODES:
        def compute(mode: str = mode) -> dict:
            started = time.time()
            plan = build_plan(prepared.canonical, calib, "default", log=log, overflow_fix=mode)
            seconds = time.time() - started
            emulated = run_chunked(plan.emulation(), x, 25)
            onnx_path = export_qdq_onnx(plan, work / f"lite1_{mode}.int8.onnx", torch.from_numpy(x[:1]),
                                        weight_dtype="int8")
            xml = onnx_to_ir(onnx_path, work / f"lite1_{mode}.int8.openvino", "lite1", {}, False, [1, *x.shape[1:]])
            row = {"mode": mode, "seven_bit_channels": plan.overflow["seven_bit_channels"],
                   "gemm_channels": plan.overflow["channels"], "verdict": plan.overflow["verdict"],
                   "plan_sha256": plan.sha256, "seconds_plan": round(seconds, 1),
                   "emulation": _metrics(reference, emulated, labels)}
            for kernel, run in _kernels(xml, x).items():
                logits = run()
                row[kernel] = {**_metrics(reference, logits, labels),
                               "cosine_vs_emulation_min": float(((emulated * logits).sum(1) / (
                                   np.linalg.norm(emulated, axis=1) * np.linalg.norm(logits, axis=1))).min())}
            return row

        rows.append(_cached(work / f"ours_{mode}.json", compute))
        log(f"ours {mode}: " + ", ".join(f"{k} top-1 {rows[-1][k]['top1']:.2f}" for k in ("emulation", *KERNELS)))
    return rows


def nncf_rows(work: Path, float_onnx: Path, calib: np.ndarray, x: np.ndarray, labels: np.ndarray,
              reference: np.ndarray) -> list[dict]:
    """NNCF on the OpenVINO model, default preset, for each of its overflow_fix settings."""
    rows = []
    for fix in NNCF_FIXES:
        def compute(fix: str = fix) -> dict:
            import nncf
            import openvino as ov
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            model = ov.convert_model(str(float_onnx))
            dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
            quantized = nncf.quantize(model, dataset, subset_size=len(calib), advanced_parameters=(
                AdvancedQuantizationParameters(overflow_fix=OverflowFix(fix))))
            xml = work / f"nncf_{fix}.xml"
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            return {"nncf_overflow_fix": fix, **{k: _metrics(reference, run(), labels)
                                                 for k, run in _kernels(xml, x).items()}}

        rows.append(_cached(work / f"nncf_{fix}.json", compute))
        log(f"nncf {fix}: " + ", ".join(f"{k} top-1 {rows[-1][k]['top1']:.2f}" for k in KERNELS))
    return rows


def markdown(summary: dict) -> str:
    def cells(m: dict) -> str:
        lo, hi = m["drop_ci95"]
        return (f"{m['top1']:.2f} | {m['drop_top1']:+.2f} ({lo:+.2f}, {hi:+.2f}) | {m['flips_vs_float']} | "
                f"{m['cosine_mean']:.5f} / {m['cosine_min']:.5f}")

    lines = [f"# The x86 int8 overflow fix on EfficientNet-Lite1 ({summary['heldout']} held-out photos)", "",
             f"Float top-1 {summary['float_top1']:.2f}. Calibration: {CALIB_COUNT} photos (sha256 "
             f"{summary['calibration_sha256'][:12]}). Measured on: {cpu_line(summary['cpu'])}. "
             f"Command: `{summary['command']}`.", "",
             "Columns: top-1; drop in points vs float (paired 95% interval); top-1 flips vs float (images whose "
             "class differs from float's); per-image cosine vs float, mean / min.", "",
             "| quantization | 7-bit GEMM channels | run on | top-1 | drop pt (95% CI) | flips vs float | "
             "cosine mean / min |", "|---|---|---|---|---|---|---|"]
    for row in summary["ours"]:
        share = f"{row['seven_bit_channels']}/{row['gemm_channels']}"
        lines.append(f"| ours, `--overflow-fix {row['mode']}` | {share} | PyTorch emulation | {cells(row['emulation'])} |")
        for kernel, label in KERNELS.items():
            lines.append(f"| ours, `--overflow-fix {row['mode']}` | {share} | OpenVINO, {label} | {cells(row[kernel])} |")
    for row in summary["nncf"]:
        for kernel, label in KERNELS.items():
            lines.append(f"| NNCF, `overflow_fix={row['nncf_overflow_fix']}` | - | OpenVINO, {label} | "
                         f"{cells(row[kernel])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mnv4-overflow-fix"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    import torch

    from mnv4_deploy.converters.onnx import export_float_onnx
    from mnv4_deploy.batches import run_chunked
    from mnv4_deploy.calibration_stream import calibration_set
    from mnv4_deploy.data import labeled_batch
    from mnv4_deploy.pipeline import prepare_model
    from mnv4_deploy.recipes import load_recipe
    from mnv4_deploy.weights_packages import weights_file

    args.work.mkdir(parents=True, exist_ok=True)
    calib_dir, heldout_dir = args.work / "split" / "calib", args.work / "split" / "eval"
    if not (heldout_dir / "labels.csv").exists():
        split(args.source, args.work / "split", CALIB_COUNT, seed=0)
    recipe = load_recipe("default")
    prepared = prepare_model(MODEL, weights=weights_file(WEIGHTS_FOR), calib_data=calib_dir, calib_size=CALIB_COUNT,
                             log=log)
    calib = calibration_set(calib_dir, prepared.contract, CALIB_COUNT, recipe.calibration_seed, log=log,
                            minimum=CALIB_COUNT, needed_for=f"{CALIB_COUNT} calibration photos")
    heldout = labeled_batch(heldout_dir, prepared.contract, None, 0, num_classes=1000, log=log)
    x, labels = heldout.tensors, heldout.labels
    with torch.no_grad():
        reference = run_chunked(lambda b: prepared.canonical(torch.from_numpy(b)).numpy(), x, 25)
    float_onnx = args.work / "lite1.onnx"
    if not float_onnx.exists():
        export_float_onnx(prepared.canonical, prepared.example, float_onnx, 17, dynamic_batch=False, simplify=True)
    summary = {"model": MODEL, "command": "python benchmarks/overflow_fix.py " + " ".join(sys.argv[1:]),
               "cpu": cpu_facts(), "calibration_sha256": calib.sha256, "heldout": int(len(labels)),
               "float_top1": float(100.0 * np.mean(reference.argmax(1) == labels)),
               "ours": our_rows(args.work, prepared, calib.tensors, x, labels, reference),
               "nncf": nncf_rows(args.work, float_onnx, calib.tensors, x, labels, reference)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overflow_fix.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text = markdown(summary)
    (args.out / "overflow_fix.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
