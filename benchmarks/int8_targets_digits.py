"""Every int8 target on the really trained digits MNv4, side by side, written as JSON + Markdown.

    python benchmarks/int8_targets_digits.py [--targets onnx,onnx-int8,...] [--out DIR]

Random weights say nothing about accuracy, so this uses the network the test suite trains
(tests/trained_net.py: timm conv_small_050 on scikit-learn digits, cached after the first
run) and goes through the user's path: image folders for `--calib-data` and `--eval-data`,
one `export` run, so every int8 target shares the one quantization plan. The table is the one
the README's INT8 section shows: size, cosine against float and against the target's own
PyTorch emulation, top-1 on the held-out digits and the drop with its paired 95% interval.
Targets whose backend is not installed are skipped by name.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # trained_net lives with the tests that share it

from trained_net import load_trained_digits, write_digit_images  # noqa: E402

from bench_common import fmt, forecast_rows, result_row  # noqa: E402

from mnv4_deploy import export  # noqa: E402
from mnv4_deploy.registry import find_targets, load_target  # noqa: E402

DEFAULT_TARGETS = ("onnx,onnx-int8,tflite-dynamic,tflite-int8,edgetpu,coreml-w8,coreml-int8,bpu-x5")


def _installed(names: list[str]) -> tuple[list[str], list[str]]:
    eps = find_targets()
    have, missing = [], []
    for name in names:
        ok = name in eps and not load_target(name, eps).info.missing_backends()
        (have if ok else missing).append(name)
    return have, missing


def markdown(rows: list[dict], reference_top1: float, images: int, calib: int, skipped: list[str]) -> str:
    lines = [f"# Int8 targets on the trained digits MNv4 ({images} held-out images, {calib} calibration images)", "",
             f"Float reference top-1: {reference_top1:.2f}%", "",
             "| target | status | size MB | cosine vs float | cosine vs emulation | top-1 | drop pt (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["drop_ci95"]
        drop = "-" if r["drop_top1"] is None else f"{r['drop_top1']:+.2f}" + (f" ({ci[0]:+.2f}, {ci[1]:+.2f})" if ci else "")
        lines.append(f"| `{r['target']}` | {r['status']} | {fmt(r['size_mb'], '.2f')} | {fmt(r['cosine_vs_float'], '.6f')} | "
                     f"{fmt(r['cosine_vs_emulation'], '.6f')} | {fmt(r['top1'], '.2f')} | {drop} |")
    if skipped:
        lines += ["", f"Not installed here: {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=DEFAULT_TARGETS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    targets, skipped = _installed([t for t in args.targets.split(",") if t])
    net = load_trained_digits()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digit_images(root / "calib", net.x_calib, net.contract)
        write_digit_images(root / "eval", net.x_heldout, net.contract, net.y_heldout)
        report = export(net.model, targets, root / "out", contract=net.contract, name="digits",
                        calib_data=root / "calib", eval_data=root / "eval", log=lambda m: print(m, file=sys.stderr))
    rows = [row for r in report.results for row in [result_row(r), *forecast_rows(r)]]
    summary = {"model": net.settings.arch, "reference_top1": report.evaluation["reference_top1"],
               "heldout_images": len(net.y_heldout), "calibration_images": len(net.x_calib),
               "not_installed": skipped, "rows": rows, "quantization": report.quantization}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_targets_digits.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text = markdown(rows, summary["reference_top1"], len(net.y_heldout), len(net.x_calib), skipped)
    (args.out / "int8_targets_digits.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
