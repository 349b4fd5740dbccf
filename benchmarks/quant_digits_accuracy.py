"""INT8 accuracy of the quantization engine on the trained digits MNv4, written as JSON + Markdown.

    python benchmarks/quant_digits_accuracy.py

For every range estimator, with and without equalization / bias correction: held-out top-1
of the fake-quant model, its logit SQNR against float, and for the full recipe the QDQ ONNX
in onnxruntime (top-1, parity with fake-quant). The network is tests/trained_net.py's
(trained once, cached).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from trained_net import load_trained_digits  # noqa: E402

from mnv4_deploy.canonicalize import canonicalize  # noqa: E402
from mnv4_deploy.quant import ESTIMATORS, build_plan  # noqa: E402
from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx, ort_session, run_session  # noqa: E402
from mnv4_deploy.recipes import load_recipe  # noqa: E402
from mnv4_deploy.validate import compare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 32x32 tensors: one thread is fastest (see tests/conftest.py)
    net = load_trained_digits()
    canonical, _ = canonicalize(net.model, torch.from_numpy(net.x_calib[:2]))
    x = torch.from_numpy(net.x_heldout)
    with torch.no_grad():
        ref = canonical(x).numpy()
    base = load_recipe("default").to_dict()
    base["calibration"]["batch_size"] = 256
    rows = []
    for est in ESTIMATORS:
        for eq, bc in ((False, False), (False, True), (True, False), (True, True)):
            recipe = copy.deepcopy(base)
            recipe["activations"]["estimator"] = est
            recipe["equalization"], recipe["bias_correction"] = eq, bc
            t = time.time()
            plan = build_plan(canonical, net.x_calib, recipe, log=lambda _: None)
            built = time.time() - t
            with torch.no_grad():
                q = plan.fake_quant_model()(x).numpy()
            row = {"estimator": est, "equalization": eq, "bias_correction": bc,
                   "float_top1": round(net.float_top1, 2), "int8_top1": round(net.top1(q), 2), "drop": round(net.float_top1 - net.top1(q), 2),
                   "logit_sqnr_db": round(compare(ref, q).sqnr_db, 2), "build_s": round(built, 1)}
            if eq and bc:
                with tempfile.TemporaryDirectory() as tmp:
                    path = export_qdq_onnx(plan, Path(tmp) / "int8.onnx", x[:1])
                    o = run_session(ort_session(path), net.x_heldout)
                cos = np.sum(q * o, 1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(o, axis=1))
                row.update({"ort_top1": round(net.top1(o), 2), "ort_vs_fq_sqnr_db": round(compare(q, o).sqnr_db, 2),
                            "ort_vs_fq_cos_median": float(np.median(cos)),
                            "ort_vs_fq_cos_p01": float(np.percentile(cos, 1)),
                            "ort_vs_fq_cos_min": float(cos.min()),
                            "ort_vs_fq_cos_batch": float(np.sum(q * o) / (np.linalg.norm(q) * np.linalg.norm(o)))})
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"model": net.settings.arch, "dataset": "sklearn digits, 32x32", "heldout": len(net.y_heldout),
              "calibration": len(net.x_calib), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant_digits_accuracy.json").write_text(json.dumps(result, indent=2))
    lines = [f"# INT8 on the trained digits MNv4 ({net.settings.arch}, {len(net.y_heldout)} held-out images)", "",
             "| estimator | CLE | bias corr. | float top-1 | int8 top-1 | drop | logit SQNR dB | ORT top-1 "
             "| ORT vs FQ SQNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['equalization']} | {r['bias_correction']} | {r['float_top1']} | "
                     f"{r['int8_top1']} | {r['drop']} | {r['logit_sqnr_db']} | {r.get('ort_top1', '')} | "
                     f"{r.get('ort_vs_fq_sqnr_db', '')} |")
    (args.out / "quant_digits_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
