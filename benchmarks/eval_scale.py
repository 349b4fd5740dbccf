"""Peak memory and throughput of the streamed one-pass evaluation as the labeled set grows.

    python benchmarks/eval_scale.py [--sizes 1000,5000,20000] [--workers 2] [--img-size 224]
                                    [--work /tmp/mnv4-eval-scale]

1. Makes max(--sizes) labeled JPEGs by augmenting ../shared/data/imagenet-samples (seeded crop,
   flip and brightness; each keeps its source's label; written once into --work, with labels.csv).
2. Exports conv_small (random init) to onnx, onnx-int8 and tflite-int8 once (64 calibration images).
3. For each N, in a fresh process: the reference (PyTorch) + the three artifacts in one streamed
   pass over a seeded sample of N images (`evaluation.run_evaluation`, --workers decode processes);
   and, for comparison, a plain loop that decodes with PIL in the main process and runs the onnx
   artifact alone in onnxruntime on the same images.
Peak RSS: the evaluating process's own peak (ru_maxrss), and the peak of the sum over it and every
process below it (decode workers), sampled every 0.2 s. Writes results/eval_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
RESULTS = REPO / "benchmarks" / "results"
TARGETS = ("onnx", "onnx-int8", "tflite-int8")
MODE_NAMES = {"plain": "plain loop (PIL + onnxruntime, onnx only)", "streamed-onnx": "streamed, onnx artifact alone",
              "streamed": "streamed one pass, reference + 3 targets"}
MODES = tuple(MODE_NAMES)
MODEL = "conv_small"


# ---- data ---------------------------------------------------------------------------------------

def _augment_one(job: tuple[str, str, int]) -> None:
    """One seeded augmentation of a source photo, saved as JPEG."""
    import random

    from PIL import Image, ImageEnhance

    src, dest, seed = job
    rng = random.Random(seed)
    with Image.open(src) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = rng.uniform(0.8, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
        img.save(dest, quality=90)


def make_dataset(folder: Path, count: int, workers: int) -> Path:
    """`count` augmented copies of the sample photos with their labels (reused when already there)."""
    import multiprocessing

    labels = folder / "labels.csv"
    if labels.exists() and sum(1 for _ in open(labels)) - 1 >= count:
        return folder
    with open(SAMPLES / "labels.csv", newline="") as fh:
        rows = sorted((r["file"], r["class_index"]) for r in csv.DictReader(fh))
    (folder / "img").mkdir(parents=True, exist_ok=True)
    jobs, out_rows = [], []
    for i in range(count):
        name, label = rows[i % len(rows)]
        dest = folder / "img" / f"aug_{i:06d}.jpg"
        out_rows.append((dest.relative_to(folder).as_posix(), label))
        if not dest.exists():
            jobs.append((str(SAMPLES / name), str(dest), i))
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_augment_one, jobs, chunksize=64)
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class_index"])
        writer.writerows(out_rows)
    print(f"made {len(jobs)} images in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


# ---- measurement (child processes) --------------------------------------------------------------

class TreeRss:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, period: float = 0.2):
        import psutil

        self.me, self.period, self.peak = psutil.Process(), period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.period)

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _peak_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_streamed(work: Path, n: int, workers: int, img_size: int, engine_only: bool = False) -> dict:
    """The one pass; `engine_only`: the onnx artifact alone as the only side (the plain loop's work)."""
    from mnv4_deploy import data, evaluation
    from mnv4_deploy.batches import torch_runner
    from mnv4_deploy.pipeline import prepare_model
    from mnv4_deploy.registry import Artifact, load_target

    quiet = lambda _m: None  # noqa: E731
    prepared = prepare_model(MODEL, img_size=img_size, log=quiet)
    artifacts = json.loads((work / "artifacts" / "manifest.json").read_text())["artifacts"]
    runners = {}
    for art in artifacts:
        conv = load_target(art["target"])
        runners[art["target"]] = conv.runner(Artifact(art["target"], work / "artifacts" / art["file"],
                                                      conv.info.precision)).run
    labeled = data.labeled_files(work / "data").subset(range(n))  # the first N, whatever the folder's size
    spec = evaluation.EvalSpec(labeled, prepared.contract, {"model": MODEL})
    reference = torch_runner(prepared.canonical, one_thread=True)
    if engine_only:
        reference, runners = runners["onnx"], {}
    before = _peak_self_mb()
    out = work / f"streamed_{n}"
    with TreeRss() as tree:
        started = time.perf_counter()
        records = evaluation.run_evaluation(spec, reference, runners, out, workers=workers, log=quiet)
        seconds = time.perf_counter() - started
    mode = MODE_NAMES["streamed-onnx" if engine_only else "streamed"]
    return {"n": n, "mode": mode, "sides": ["onnx"] if engine_only else ["reference", *runners], "workers": workers,
            "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(_peak_self_mb(), 0), "peak_rss_mb_before_pass": round(before, 0),
            "peak_tree_rss_mb": round(tree.peak / 2 ** 20, 0),
            "model_seconds": json.loads((out / "eval" / "meta.json").read_text())["model_seconds"],
            "reference_top1": records.describe(prepared.contract.sha256())["reference_top1"],
            "top1": {t: round(records.accuracy(t).top1, 2) for t in runners}}


def child_plain(work: Path, n: int, img_size: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from mnv4_deploy import data, models

    contract = models.contract_for(models.resolve(MODEL, None, img_size))
    labeled = data.labeled_files(work / "data").subset(range(n))  # the first N, whatever the folder's size
    session = ort.InferenceSession(str(work / "artifacts" / f"{MODEL}.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    with TreeRss() as tree:
        started = time.perf_counter()
        for path, label in zip(labeled.files, labeled.labels):  # the artifact has a fixed batch of 1
            logits = session.run(None, {name: contract.load_image(path)[None]})[0]
            correct += int(np.argmax(logits[0]) == label)
        seconds = time.perf_counter() - started
    return {"n": n, "mode": MODE_NAMES["plain"], "seconds": round(seconds, 1),
            "images_per_s": round(n / seconds, 1), "peak_rss_mb": round(_peak_self_mb(), 0),
            "peak_tree_rss_mb": round(tree.peak / 2 ** 20, 0), "top1_onnx": round(100 * correct / n, 2)}


# ---- driver ----------------------------------------------------------------------------------

def export_artifacts(work: Path, img_size: int) -> None:
    import mnv4_deploy

    if (work / "artifacts" / "manifest.json").exists():
        return
    report = mnv4_deploy.export(MODEL, ",".join(TARGETS), work / "artifacts", img_size=img_size, calib_data=SAMPLES,
                                calib_size=64, log=lambda m: print(m, file=sys.stderr))
    if report.exit_code != 0:
        raise SystemExit(f"export failed (exit {report.exit_code})")


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Streamed evaluation at scale ({meta['model']} {meta['img_size']} px, random init)", "",
             f"{meta['note']}", "",
             "| N | mode | images/s | seconds | peak RSS main MB | peak RSS incl. workers MB | plain loop's images/s / this |",
             "|---|---|---|---|---|---|---|"]
    plain = {r["n"]: r for r in rows if r["mode"].startswith("plain")}
    for r in rows:
        ratio = (f"{plain[r['n']]['images_per_s'] / r['images_per_s']:.2f}x" if not r["mode"].startswith("plain")
                 and r["n"] in plain else "-")
        lines.append(f"| {r['n']} | {r['mode']} | {r['images_per_s']} | {r['seconds']} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_tree_rss_mb']:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mnv4-eval-scale"))
    parser.add_argument("--modes", default="plain,streamed-onnx,streamed",
                        help="which measurements to (re)run; rows of other sizes and modes are kept")
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.child in ("streamed", "streamed-onnx"):
        print(json.dumps(child_streamed(args.work, args.n, args.workers, args.img_size, args.child != "streamed")))
        return
    if args.child == "plain":
        print(json.dumps(child_plain(args.work, args.n, args.img_size)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    make_dataset(args.work / "data", max(sizes), args.workers)
    export_artifacts(args.work, args.img_size)
    previous = json.loads((RESULTS / "eval_scale.json").read_text())["rows"] if (RESULTS / "eval_scale.json").exists() else []
    modes = [m for m in args.modes.split(",") if m]
    wanted = {(n, MODE_NAMES[m]) for n in sizes for m in modes}
    rows = [r for r in previous if (r["n"], r["mode"]) not in wanted]  # earlier measurements are kept
    common = ["--work", str(args.work), "--img-size", str(args.img_size), "--workers", str(args.workers)]
    for n in sizes:
        for mode in modes:
            rows.append(run_child(["--child", mode, "--n", str(n), *common]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    load = os.getloadavg()
    rows.sort(key=lambda r: (r["n"], r["mode"]))
    meta = {"model": MODEL, "img_size": args.img_size, "targets": list(TARGETS), "workers": args.workers,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "load_average_at_end": load,
            "note": (f"reference + {', '.join(TARGETS)} in one pass with {args.workers} decode worker processes vs "
                     "a plain loop (PIL decode in the main process + onnxruntime on the onnx artifact alone, image "
                     "by image: the artifact has a fixed batch of 1), and the streamed engine running that same onnx "
                     "artifact alone (the plain loop's work, through the worker pool and records), on "
                     f"{os.cpu_count()} cores shared with other jobs (1-min load average at the end "
                     f"{load[0]:.1f}), so absolute rates are inflated by contention.")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "eval_scale.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
