"""Peak memory and throughput of the streamed one-pass evaluation as the labeled set grows.

    python benchmarks/eval_scale.py [--sizes 1000,5000,20000] [--modes plain,streamed-onnx,...]
                                    [--photos val|samples] [--workers 2] [--img-size 224]
                                    [--work /tmp/mnv4-eval-scale]

1. Makes max(--sizes) labeled JPEGs by augmenting ../shared/data/imagenet-samples (seeded crop,
   flip and brightness; each keeps its source's label; written once into --work, with labels.csv).
   `--photos val` (default) then scales each to a 500 px long side, the size of most ImageNet
   validation photos (500x375, 500x333, 375x500): the samples were stored with a 256 px short
   side, and decoding cost follows the pixel count (2.2 vs 0.5-1.0 ms per image here), so
   the samples' own size would understate what decoding the validation set costs against the
   models. `--photos samples` keeps the samples' size (results in eval_scale_samples.*).
2. Exports conv_small (random init) to onnx, onnx-int8 and tflite-int8 once (64 calibration images).
3. For each N and mode, in a fresh process, on the first N images:
   - plain: a plain loop, PIL decode in the main process + the onnx artifact alone in onnxruntime
     (a default session, threads spinning between runs; the pass's runners' threads sleep);
   - streamed-onnx: our pass as `--to onnx` runs it: reference (PyTorch) + onnx;
   - plain-four: a plain loop running the same four models as the full pass on each image;
   - streamed: our pass, reference + onnx + onnx-int8 + tflite-int8;
   - streamed-reused: the full pass again, the reference's records reused from `streamed`'s run;
   - streamed-engine: the onnx artifact alone through the pass (no reference);
   - floor: no pass at all: the CPU each part costs on its own (decoding, the reference, each
     artifact through the pass's runner, with its own thread settings), measured warm, one after
     another, on the first 256 images; their sum spread evenly over the host's cores estimates the
     most images/s that work allows here (an estimate, not a bound: a runner alone may spend more
     than inside the pass, and a runner built with other thread settings less).
   Comparisons: plain vs streamed-onnx, plain-four vs streamed, and streamed-reused; and the floor's
   best possible images/s for each set of models against the plain loop.
Peak RSS: the evaluating process's own peak (ru_maxrss), and the peak of the sum over it and every
process below it (decode workers), sampled every 0.2 s. CPU seconds: user + system of the process
and its waited-for children, which the other jobs on a shared host do not inflate as much as the
wall clock. The 1-min load average is recorded beside every row. Writes results/eval_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "imagenet-samples"
RESULTS = REPO / "benchmarks" / "results"
TARGETS = ("onnx", "onnx-int8", "tflite-int8")
MODE_NAMES = {"plain": "(a) plain loop: PIL + onnxruntime, onnx alone",
              "streamed-onnx": "(b) streamed pass, reference + onnx (--to onnx)",
              "plain-four": "(c) plain loop: PIL + reference + 3 targets",
              "streamed": "(c) streamed pass, reference + 3 targets",
              "streamed-reused": "(d) streamed pass, 3 targets, reference records reused",
              "streamed-engine": "streamed pass, onnx artifact alone (no reference)",
              "floor": "floor: each part's CPU on its own (no pass)"}
FLOOR_IMAGES = 256
FLOOR_SETS = {"decode + onnx (plain loop's work)": ("decode", "onnx"),
              "decode + reference + onnx (--to onnx)": ("decode", "reference", "onnx"),
              "decode + reference + 3 targets (full pass)": ("decode", "reference", *TARGETS)}
COMPARISONS = (("plain", "streamed-onnx"), ("plain-four", "streamed"), ("plain-four", "streamed-reused"))
MODES = tuple(MODE_NAMES)
MODEL = "conv_small"


# ---- data ---------------------------------------------------------------------------------------

VAL_LONG_SIDE = 500  # ImageNet validation photos: mostly 500x375, 500x333 or 375x500
PHOTOS = {"val": VAL_LONG_SIDE, "samples": 0}


def _augment_one(job: tuple[str, str, int, int]) -> None:
    """One seeded augmentation of a source photo, scaled to `long_side` px (0: kept), saved as JPEG."""
    import random

    from PIL import Image, ImageEnhance

    src, dest, seed, long_side = job
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
        if long_side:
            factor = long_side / max(img.size)
            img = img.resize((round(img.width * factor), round(img.height * factor)), Image.BICUBIC)
        img.save(dest, quality=90)


def data_dir(work: Path, photos: str) -> Path:
    return work / ("data" if photos == "samples" else f"data-{photos}{PHOTOS[photos]}")


def make_dataset(folder: Path, count: int, workers: int, long_side: int) -> Path:
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
            jobs.append((str(SAMPLES / name), str(dest), i, long_side))
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
    """Peak of the summed RSS of this process and all its descendants, and their CPU time, sampled in a thread.

    The decode workers are the forkserver's children, not ours, so `getrusage(RUSAGE_CHILDREN)`
    never sees them: CPU seconds are the last sampled user + system time of every process of the
    tree (a worker's last 0.2 s can be missed), minus what each had when the sampling began.
    """

    def __init__(self, period: float = 0.2):
        import psutil

        self.me, self.period, self.peak = psutil.Process(), period, 0
        self._started = False
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        total = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self.cpu_last[proc.pid] = times.user + times.system
                self.cpu_start.setdefault(proc.pid, 0.0 if self._started else self.cpu_last[proc.pid])
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def cpu_seconds(self) -> float:
        return sum(self.cpu_last[pid] - self.cpu_start.get(pid, 0.0) for pid in self.cpu_last)

    def __enter__(self) -> "TreeRss":
        self._sample()  # processes alive now count from their current CPU time; later ones from zero
        self._started = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _peak_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _runners(work: Path) -> dict:
    from mnv4_deploy.registry import Artifact, load_target

    runners = {}
    for art in json.loads((work / "artifacts" / "manifest.json").read_text())["artifacts"]:
        conv = load_target(art["target"])
        runners[art["target"]] = conv.runner(Artifact(art["target"], work / "artifacts" / art["file"],
                                                      conv.info.precision)).run
    return runners


def _timed(n: int, mode: str, body) -> dict:
    """Run `body()` under the RSS sampler; the row's wall and CPU seconds, rates, peaks and load."""
    load_before, before = _load(), _peak_self_mb()
    with TreeRss() as tree:
        started = time.perf_counter()
        extra = body()
        seconds = time.perf_counter() - started
    cpu = tree.cpu_seconds()
    return {"n": n, "mode": MODE_NAMES[mode], "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 1),
            "cpu_seconds": round(cpu, 1), "cpu_ms_per_image": round(1000 * cpu / n, 2),
            "peak_rss_mb": round(_peak_self_mb(), 0), "peak_rss_mb_before_pass": round(before, 0),
            "peak_tree_rss_mb": round(tree.peak / 2 ** 20, 0), "load_before": load_before, "load_after": _load(),
            **extra}


def child_streamed(work: Path, photos: str, n: int, workers: int, img_size: int, mode: str) -> dict:
    """Our pass, as `mnv4-export --eval-data` runs it (EvalStage's reference runner and key)."""
    from mnv4_deploy import data, evaluation
    from mnv4_deploy.batches import torch_runner
    from mnv4_deploy.eval_stage import EvalStage, reference_model
    from mnv4_deploy.pipeline import prepare_model

    prepared = prepare_model(MODEL, img_size=img_size, log=lambda _m: None)
    runners = _runners(work)
    labeled = data.labeled_files(data_dir(work, photos)).subset(range(n))  # the first N, whatever its size
    stage = EvalStage(labeled, prepared.contract)
    identity = {"model": MODEL, "recipe": "default", "contract": prepared.contract.sha256(),
                "eval_set": labeled.listing_sha256(prepared.contract), "eval_layout": labeled.layout}
    spec = evaluation.EvalSpec(labeled, prepared.contract, identity,
                               reference_key=stage.reference_key(prepared.canonical, identity))
    reference = torch_runner(reference_model(prepared.canonical), one_thread=True)
    out, reuse_from = work / f"{mode}_{photos}_{n}", None
    if mode == "streamed-onnx":
        runners = {"onnx": runners["onnx"]}
    elif mode == "streamed-engine":
        reference, runners, spec.reference_key = runners["onnx"], {}, None
    elif mode == "streamed-reused":
        reuse_from = work / f"streamed_{photos}_{n}" / evaluation.EVAL_DIR
        if not (reuse_from / evaluation.META).is_file():
            raise SystemExit(f"streamed-reused needs the streamed run's records: run mode streamed for N={n} first")
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's records there would be reused (or resumed)
    lines: list[str] = []

    def body() -> dict:
        records = evaluation.run_evaluation(spec, reference, runners, out, workers=workers, log=lines.append,
                                            reference_from=reuse_from)
        meta = json.loads((out / evaluation.EVAL_DIR / evaluation.META).read_text())
        return {"sides": ([] if mode == "streamed-engine" else ["reference"]) + list(runners), "workers": workers,
                "model_seconds": meta["model_seconds"], "reference_reused": meta["reference_reused"],
                "reference_top1": records.describe(prepared.contract.sha256())["reference_top1"],
                "top1": {t: round(records.accuracy(t).top1, 2) for t in runners}}

    row = _timed(n, mode, body)
    if row["reference_reused"] != (n if mode == "streamed-reused" else 0):
        raise SystemExit(f"{mode}: {row['reference_reused']} reused reference records: " + " | ".join(lines))
    return row


def child_plain(work: Path, photos: str, n: int, img_size: int, mode: str) -> dict:
    """A plain loop: decode each image with PIL in this process, run the model(s) on it, count top-1.

    `plain`: the onnx artifact alone in onnxruntime. `plain-four`: the reference through the pass's own
    runner (channels-last copy, one torch thread: torch's default 2-thread pool beside onnxruntime's
    threads ran this loop at 0.7 images/s under load) and the three artifacts through their runners.
    """
    import numpy as np
    import onnxruntime as ort

    from mnv4_deploy import data
    from mnv4_deploy.batches import torch_runner
    from mnv4_deploy.eval_stage import reference_model
    from mnv4_deploy.pipeline import prepare_model

    prepared = prepare_model(MODEL, img_size=img_size, log=lambda _m: None)
    contract = prepared.contract
    labeled = data.labeled_files(data_dir(work, photos)).subset(range(n))  # the first N, whatever its size
    if mode == "plain":
        session = ort.InferenceSession(str(work / "artifacts" / f"{MODEL}.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        models = {"onnx": lambda x: session.run(None, {name: x})[0]}
    else:
        models = {"reference": torch_runner(reference_model(prepared.canonical), one_thread=True), **_runners(work)}
    correct = dict.fromkeys(models, 0)

    def body() -> dict:
        for path, label in zip(labeled.files, labeled.labels):  # the artifacts have a fixed batch of 1
            x = contract.load_image(path)[None]
            for side, run in models.items():
                correct[side] += int(np.argmax(run(x)[0]) == label)
        return {"sides": list(models), "top1": {s: round(100 * c / n, 2) for s, c in correct.items()}}

    return _timed(n, mode, body)


def child_floor(work: Path, photos: str, n: int, img_size: int) -> dict:
    """CPU per image of each part alone: decoding, the reference and each artifact, run one after another.

    Process CPU time (every thread of this process, so a runner's own thread pool counts) over the
    first min(N, FLOOR_IMAGES) images, in the chunks the pass uses. Each part is timed warm: decoding
    on its second pass over the files (the first one measured 2.8-3.1 ms per image against 1.6 for
    the second: page cache and the allocator's first growth), each model after one warm-up chunk.
    """
    import numpy as np

    from mnv4_deploy import data
    from mnv4_deploy.batches import CHUNK, torch_runner
    from mnv4_deploy.eval_stage import reference_model
    from mnv4_deploy.pipeline import prepare_model
    from mnv4_deploy.preprocess import decode_image

    prepared = prepare_model(MODEL, img_size=img_size, log=lambda _m: None)
    labeled = data.labeled_files(data_dir(work, photos)).subset(range(min(n, FLOOR_IMAGES)))
    count = len(labeled)
    tensors = np.stack([decode_image(path, prepared.contract) for path in labeled.files])  # warm-up
    started = time.process_time()
    tensors = np.stack([decode_image(path, prepared.contract) for path in labeled.files])
    ms = {"decode": 1000 * (time.process_time() - started) / count}
    models = {"reference": torch_runner(reference_model(prepared.canonical), one_thread=True), **_runners(work)}
    for side, run in models.items():
        run(tensors[:CHUNK])
        started = time.process_time()
        for i in range(0, count, CHUNK):
            run(tensors[i:i + CHUNK])
        ms[side] = 1000 * (time.process_time() - started) / count
    cores = os.cpu_count() or 1
    best = {name: round(1000 * cores / sum(ms[p] for p in parts), 1) for name, parts in FLOOR_SETS.items()}
    return {"n": n, "mode": MODE_NAMES["floor"], "images": count, "cores": cores, "load_before": _load(),
            "cpu_ms_per_image_by_part": {k: round(v, 2) for k, v in ms.items()}, "best_images_per_s": best}


# ---- driver ----------------------------------------------------------------------------------

def export_artifacts(work: Path, img_size: int) -> None:
    import mnv4_deploy

    if (work / "artifacts" / "manifest.json").exists():
        return
    report = mnv4_deploy.export(MODEL, ",".join(TARGETS), work / "artifacts", img_size=img_size, calib_data=SAMPLES,
                                calib_size=64, log=lambda m: print(m, file=sys.stderr))
    if report.exit_code != 0:
        raise SystemExit(f"export failed (exit {report.exit_code})")


def warm_page_cache(folder: Path, n: int) -> None:
    """Read the first N files once, so no mode is the one that pays for reading them from disk.

    Without it the first mode of each N read every file not seen before cold (at N=20,000 the plain
    loop, which ran first, measured 228 img/s against 259-273 at 1,000 and 5,000).
    """
    from mnv4_deploy import data

    for path in data.labeled_files(folder).subset(range(n)).files:
        Path(path).read_bytes()


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_flags() -> dict:
    """`lscpu`'s model name and flags, and the SIMD ones that change the runtimes' int8/float kernels."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                      "amx_tile", "amx_int8", "amx_bf16")]
    from mnv4_deploy.host import cpu_description

    return {"model_name": fields.get("Model name", "").strip(), "simd": simd, "flags": flags,
            "int8_class": cpu_description()["int8_class"]}


def _row_line(r: dict) -> str:
    return (f"| {r['n']} | {r['mode']} | {r['images_per_s']} | {r.get('cpu_ms_per_image', '-')} | {r['seconds']} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_tree_rss_mb']:.0f} | {r.get('load_before', '-')} -> "
            f"{r.get('load_after', '-')} |")


def floor_lines(rows: list[dict]) -> list[str]:
    """Each floor row: the parts' CPU, and the best possible rate of each model set beside the plain loop's."""
    by = {(r["n"], r["mode"]): r for r in rows}
    lines = []
    for r in (r for r in rows if r["mode"] == MODE_NAMES["floor"]):
        plain = by.get((r["n"], MODE_NAMES["plain"]))
        parts = ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_image_by_part"].items())
        lines += [f"N={r['n']} ({r['images']} images, load {r['load_before']}): CPU ms per image: {parts}.", "",
                  "| work | best possible images/s on " + f"{r['cores']} cores | plain loop images/s | "
                  "plain loop / best possible |", "|---|---|---|---|"]
        for name, best in r["best_images_per_s"].items():
            ratio = f"{plain['images_per_s'] / best:.2f}x" if plain else "-"
            lines.append(f"| {name} | {best} | {plain['images_per_s'] if plain else '-'} | {ratio} |")
        lines.append("")
    return lines


def comparisons(rows: list[dict]) -> list[str]:
    """Baseline vs ours for each N where both were measured: wall-clock and CPU-time ratios."""
    by = {(r["n"], r["mode"]): r for r in rows}
    lines = ["| N | baseline | ours | baseline images/s | ours images/s | wall ratio (baseline/ours) | "
             "CPU ms/image ours / baseline |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        for base, ours in COMPARISONS:
            b, o = by.get((n, MODE_NAMES[base])), by.get((n, MODE_NAMES[ours]))
            if b and o:
                lines.append(f"| {n} | {base} | {ours} | {b['images_per_s']} | {o['images_per_s']} | "
                             f"{b['images_per_s'] / o['images_per_s']:.2f}x | "
                             f"{o['cpu_ms_per_image'] / b['cpu_ms_per_image']:.2f}x |")
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Streamed evaluation at scale ({meta['model']} {meta['img_size']} px, random init)", "",
             meta["note"], "", f"Host: {meta['cpu']['model_name']}, {meta['cpu_count']} cores, SIMD flags "
             f"{' '.join(meta['cpu']['simd'])} (all flags in the JSON).", "",
             "| N | mode | images/s | CPU ms/image | seconds | peak RSS main MB | peak RSS incl. workers MB | "
             "1-min load before -> after |", "|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in rows if r["mode"] != MODE_NAMES["floor"]]
    floors = floor_lines(rows)
    if floors:
        lines += ["", "Floor: what the work itself costs, with no engine around it; its best possible images/s is an "
                  "estimate (the parts' CPU spread evenly over the cores), not a bound:", "", *floors]
    lines += ["", "Comparisons (a wall ratio above 1 means ours is slower; CPU time is what each spent, "
              "whatever the other jobs on the host did):", "", *comparisons(rows)]
    return "\n".join(lines) + "\n"


def results_stem(photos: str) -> str:
    return "eval_scale" if photos == "val" else f"eval_scale_{photos}"


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    rows.sort(key=lambda r: (r["n"], r["mode"]))
    photos = (f"photos scaled to a {PHOTOS[args.photos]} px long side (ImageNet validation's usual size)"
              if PHOTOS[args.photos] else "photos at the samples' own size (256 px short side, cropped to 80-100%)")
    meta = {"model": MODEL, "img_size": args.img_size, "targets": list(TARGETS), "workers": args.workers,
            "photos": args.photos, "photo_long_side": PHOTOS[args.photos],
            "cpu_count": os.cpu_count(), "cpu": cpu_flags(), "python": platform.python_version(),
            "note": (f"Modes (first N images of the same augmented set, {photos}, {args.workers} decode worker "
                     "processes for "
                     "the streamed pass): " + "; ".join(f"{k}: {v}" for k, v in MODE_NAMES.items())
                     + f". The host's {os.cpu_count()} cores are shared with other jobs: every row carries the 1-min "
                     "load average before and after it, and its CPU time.")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args.photos)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(rows, meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mnv4-eval-scale"))
    parser.add_argument("--photos", choices=sorted(PHOTOS), default="val",
                        help="val: augmented photos scaled to ImageNet validation's 500 px long side; samples: kept")
    parser.add_argument("--modes", default="floor,plain,streamed-onnx,plain-four,streamed,streamed-reused",
                        help="which measurements to (re)run, in this order; rows of other sizes and modes are kept")
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.child is not None:
        if args.child == "floor":
            run = child_floor(args.work, args.photos, args.n, args.img_size)
        elif args.child.startswith("plain"):
            run = child_plain(args.work, args.photos, args.n, args.img_size, args.child)
        else:
            run = child_streamed(args.work, args.photos, args.n, args.workers, args.img_size, args.child)
        print(json.dumps(run))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODE_NAMES]
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)} (choose from {', '.join(MODE_NAMES)})")
    make_dataset(data_dir(args.work, args.photos), max(sizes), args.workers, PHOTOS[args.photos])
    export_artifacts(args.work, args.img_size)
    stored = RESULTS / f"{results_stem(args.photos)}.json"
    previous = json.loads(stored.read_text())["rows"] if stored.exists() else []
    wanted = {(n, MODE_NAMES[m]) for n in sizes for m in modes}
    current = set(MODE_NAMES.values())  # rows of modes this script no longer measures are dropped
    rows = [r for r in previous if r["mode"] in current and (r["n"], r["mode"]) not in wanted]
    common = ["--work", str(args.work), "--photos", args.photos, "--img-size", str(args.img_size),
              "--workers", str(args.workers)]
    for n in sizes:
        warm_page_cache(data_dir(args.work, args.photos), n)
        for mode in modes:
            rows.append(run_child(["--child", mode, "--n", str(n), *common]))
            print(json.dumps(rows[-1]), file=sys.stderr)
            write_results(rows, args)  # after every row: a long run interrupted keeps what it measured
    print((RESULTS / f"{results_stem(args.photos)}.md").read_text())


if __name__ == "__main__":
    main()
