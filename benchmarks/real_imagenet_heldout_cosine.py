"""Worst per-image cosine vs float over all held-out images, for a real_imagenet.py run's int8 artifacts.

    python benchmarks/real_imagenet_heldout_cosine.py --work /tmp/mnv4-real-imagenet-eo [--out FILE.json]

`real_imagenet.py` reports our artifacts' cosine on the export's 8 golden images but the baselines'
on all 800 held-out ones; this puts the executorch-int8 / openvino-int8 artifacts and the
NNCF-OpenVINO baseline of that run's `--work` on the same footing: each runs on the 800 held-out
images against the float ONNX in onnxruntime (worst per-image cosine, top-1, paired interval,
top-1 agreement with float).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import real_imagenet as bench  # noqa: E402


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    if path.suffix == ".pte":
        from mnv4_deploy.converters.executorch.runtime import pte_runner, set_threads

        set_threads(bench.THREADS)
        return pte_runner(path).run(x)
    return bench.openvino_logits(path, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a real_imagenet.py --work directory")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args()
    from mnv4_deploy import data as datasets
    from mnv4_deploy import models
    from mnv4_deploy.validate import accuracy, compare

    export = args.work / "export"
    stem = bench.MODEL.replace(":", "_")
    candidates = {"executorch-int8": export / f"{stem}.int8.pte",
                  "openvino-int8": export / f"{stem}.int8.openvino" / f"{stem}.xml",
                  "nncf_openvino": args.work / "nncf_openvino.xml"}
    present = {name: path for name, path in candidates.items() if path.exists()}
    if not present:
        raise SystemExit(f"error: no executorch-int8/openvino-int8 artifact or nncf_openvino IR in {args.work}; "
                         "run real_imagenet.py with those targets/baselines first")
    contract = models.contract_for(models.resolve(bench.MODEL))
    heldout = datasets.labeled_batch(args.work / "split" / "eval", contract, None, 0, num_classes=1000, log=bench.log)
    reference = bench.ort_logits(export / f"{stem}.onnx", heldout.tensors)
    rows = []
    for name, path in present.items():
        logits = _logits(path, heldout.tensors)
        acc = accuracy(reference, logits, heldout.labels).to_dict()
        rows.append({"model": name, "images": len(heldout.labels), "worst_cosine_vs_float": compare(reference, logits).cosine,
                     "top1": acc["top1"], "drop_top1": acc["drop_top1"], "drop_ci95": acc["drop_top1_ci95"],
                     "top1_agreement_with_float": float(np.mean(logits.argmax(1) == reference.argmax(1)))})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"work": str(args.work), "heldout_sha256": heldout.sha256, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
