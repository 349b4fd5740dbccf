"""Choose a recipe for Lite1 on calibration photos only: no held-out photo, no label.

    python benchmarks/recipe_selection.py [--work DIR] [--recipes default,mse,adaround] [--fit 150]

Each candidate recipe is planned on the first --fit of real_imagenet.py's 200 calibration photos
(their seeded order) and its emulation scored on the rest against the float model: mean per-image
cosine of the logits (the rule: the default is kept unless another beats it by more than
--margin), min cosine and top-1 agreement with float. This is how `adaround` was chosen for the
Rockchip comparison in docs/accuracy.md before it touched the 800 held-out photos. Candidates:
a shipped recipe name or file, or `mse` (the default with activations.estimator mse).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import per_image_cosine  # noqa: E402
from real_imagenet import CALIB_COUNT, MODEL, WEIGHTS_FOR, cpu_description, log  # noqa: E402
from rknn_imagenet import _images  # noqa: E402
from split_samples import DEFAULT_SOURCE, split  # noqa: E402

VARIANTS = {"mse": ("default", {"activations": {"estimator": "mse"}})}


def candidate(name: str) -> dict:
    """A recipe mapping for `name`: a shipped/file recipe, or a named variant of one."""
    from mnv4_deploy.recipes import load_recipe

    base, changes = VARIANTS.get(name, (name, {}))
    raw = copy.deepcopy(load_recipe(base).raw)
    raw["name"] = name
    for section, values in changes.items():
        raw[section].update(values)
    return raw


def score(names: list[str], calib: np.ndarray, fit: int) -> dict:
    import torch

    from mnv4_deploy.batches import run_chunked, torch_runner
    from mnv4_deploy.pipeline import prepare_model
    from mnv4_deploy.quant import build_plan
    from mnv4_deploy.weights_packages import weights_file

    torch.set_num_threads(2)
    prepared = prepare_model(MODEL, weights=weights_file(WEIGHTS_FOR), log=log)
    planned_on, scored_on = calib[:fit], calib[fit:]
    reference = run_chunked(torch_runner(prepared.canonical), scored_on, 25)
    scores = {}
    for name in names:
        started = time.time()
        plan = build_plan(prepared.canonical, planned_on, candidate(name), log=log, overflow_fix="off")
        logits = run_chunked(plan.emulation(), scored_on, 25)
        cos = per_image_cosine(reference, logits)
        scores[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
                        "plan_seconds": round(time.time() - started, 1), "plan_sha256": plan.sha256}
        log(f"{name}: {scores[name]}")
    return scores


def chosen(scores: dict, margin: float) -> str:
    """The default unless another candidate's mean cosine beats it by more than `margin`."""
    best = max(scores, key=lambda n: scores[n]["cosine_mean"])
    if "default" in scores and scores[best]["cosine_mean"] - scores["default"]["cosine_mean"] <= margin:
        return "default"
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mnv4-recipe-selection"))
    parser.add_argument("--recipes", default="default,mse,adaround")
    parser.add_argument("--fit", type=int, default=150, help="calibration photos each plan is built on")
    parser.add_argument("--margin", type=float, default=0.0005)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "recipe_selection_lite1.json")
    args = parser.parse_args()
    calib_dir, heldout_dir = args.work / "split" / "calib", args.work / "split" / "eval"
    if not (heldout_dir / "labels.csv").exists():
        split(args.source, args.work / "split", CALIB_COUNT, seed=0)
    _, calib, _ = _images(calib_dir, heldout_dir)
    if not 0 < args.fit < len(calib):
        raise SystemExit(f"--fit {args.fit} must leave photos to score on (of {len(calib)})")
    scores = score(args.recipes.split(","), calib.tensors, args.fit)
    summary = {"model": MODEL, "command": "python benchmarks/recipe_selection.py " + " ".join(sys.argv[1:]),
               "cpu": cpu_description(), "calibration_sha256": calib.sha256, "planned_on": args.fit,
               "scored_on": int(len(calib) - args.fit), "margin": args.margin, "scores": scores,
               "chosen": chosen(scores, args.margin)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
