"""Image folders, labels, deterministic sampling, golden inputs and dataset hashing.

Every tensor that reaches a model (calibration, parity, evaluation) comes through here and
through the one `Preprocess` contract, so all targets of a run see the very same numbers.
"""
from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UnreadableImage, UsageError
from .preprocess import Preprocess, decode_image, printable_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

Log = Callable[[str], None]
GOLDEN_MINIMUM = 2  # BatchNorm re-estimation (training-mode batch statistics) and paired statistics need two


def _noop(_: str) -> None:
    pass


def find_images(root: str | Path, option: str = "--data", log: Log = _noop) -> list[Path]:
    """All image files below `root`, sorted by relative path (the deterministic order).

    Symlinked folders are followed, each real folder once: a symlink loop, or a second link to
    a folder already listed, is skipped with a warning instead of hanging or repeating images.
    A folder that cannot be listed is skipped with a warning. Entries with an image suffix that
    are not regular files (FIFOs, dangling symlinks) are kept here and named as unreadable when
    decoded, so the user sees them.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{option} {printable_path(root)}: no such directory", "pass a folder of jpg/png images")
    if not root.is_dir():
        raise UsageError(f"{option} {printable_path(root)}: not a directory", "pass a folder of jpg/png images")
    files = sorted(_walk_images(root, option, log))
    if not files:
        raise UsageError(f"{option} {printable_path(root)}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})",
                         "point it at a folder that holds jpg/png images")
    return files


def _walk_images(root: Path, option: str, log: Log) -> list[Path]:
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def visit(folder: Path) -> None:
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log(f"warning: {option}: skipping folder {printable_path(folder)}: {exc.strerror or exc}")
            return
        if (info.st_dev, info.st_ino) in seen:
            log(f"warning: {option}: skipping {printable_path(folder)}: a symlink to a folder already listed "
                "(or a symlink loop)")
            return
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks; a loop raises ELOOP or is caught by `seen`
            except OSError:
                is_dir = False
            if is_dir:
                visit(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)

    visit(root)
    return found


def sample_files(files: Sequence[Path], count: int | None, seed: int) -> list[Path]:
    """A seeded sample of `count` files, returned in sorted order (all when count is None)."""
    files = list(files)
    if count is None or count >= len(files):
        return files
    chosen = random.Random(seed).sample(range(len(files)), count)
    return [files[i] for i in sorted(chosen)]


def draw_order(total: int, count: int | None, seed: int) -> list[int]:
    """Indices to try, in order: `sample_files`' choice first (sorted), then seeded replacements.

    When every chosen file reads, the result is exactly `sample_files`' sample; each unreadable
    one is replaced by the next of the remaining files in a seeded shuffle, so the same folder
    and seed always give the same images.
    """
    if count is None or count >= total:
        return list(range(total))
    rng = random.Random(seed)
    chosen = rng.sample(range(total), count)
    taken = set(chosen)
    rest = [i for i in range(total) if i not in taken]
    rng.shuffle(rest)
    return sorted(chosen) + rest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImageBatch:
    """Preprocessed images (N, 3, H, W float32) with where they came from."""

    tensors: np.ndarray
    source: str  # "synthetic" or the folder
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    sha256: str = ""
    held_out_of: str = ""  # "calibration": golden images drawn from --calib-data, outside its sample
    note: str = ""  # why the golden inputs are what they are, when a user would ask

    def __len__(self) -> int:
        return int(self.tensors.shape[0])

    def describe(self) -> dict:
        out = {"source": self.source, "count": len(self), "sha256": self.sha256,
               "skipped": self.skipped, "labeled": self.labels is not None}
        if self.held_out_of:
            out["held_out_of"] = self.held_out_of
        if self.note:
            out["note"] = self.note
        return out


def _hash_batch(contract: Preprocess, entries: Sequence[str]) -> str:
    h = hashlib.sha256(contract.sha256().encode())
    for entry in entries:
        h.update(entry.encode("utf-8", "surrogateescape"))  # non-UTF-8 file names hash by their bytes
        h.update(b"\n")
    return h.hexdigest()


def check_readable_count(option: str, root: Path, readable: int, unreadable: int, minimum: int,
                         needed_for: str | None) -> None:
    """One line when a folder gave no readable image, or fewer than a step needs (exit 2)."""
    if not readable:
        raise UsageError(f"{option} {printable_path(root)}: none of the {unreadable} images could be read",
                         "check the files are valid jpg/png images")
    if readable < minimum:
        raise UsageError(f"{option} {printable_path(root)}: found {readable} readable images "
                         f"({unreadable} unreadable), {minimum} needed for {needed_for or 'this step'}",
                         "add readable jpg/png images to the folder")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:  # a labels.csv entry outside the folder
        return str(path)


def load_images(files: Sequence[Path], contract: Preprocess, root: Path, option: str,
                log: Log = _noop, labels: Sequence[int] | None = None, count: int | None = None,
                minimum: int = 1, needed_for: str = "", sort_keys: Sequence[int] | None = None) -> ImageBatch:
    """Preprocess `files` in order until `count` images read (all when None).

    An unreadable file (`UnreadableImage`) is skipped and named, and the next file takes its
    place, so `files` in `draw_order` gives a seeded sample with replacements; `sort_keys` (one
    per file) puts the images read back in the folder's order. Fewer than `minimum` readable
    images is one UsageError saying how many were found and needed (for what).
    """
    tensors, kept, skipped, kept_labels, entries, order = [], [], [], [], [], []
    for i, path in enumerate(files):
        if count is not None and len(tensors) >= count:
            break
        rel = _relative(path, root)
        try:
            tensors.append(decode_image(path, contract))
        except UnreadableImage as exc:
            skipped.append(printable_path(rel))
            log(f"warning: skipping unreadable image {printable_path(rel)}: {exc.reason}")
            continue
        order.append(sort_keys[i] if sort_keys is not None else i)
        kept.append(printable_path(rel))
        entries.append(f"{rel}:{file_sha256(path)}")
        if labels is not None:
            kept_labels.append(int(labels[i]))
    check_readable_count(option, root, len(tensors), len(skipped), minimum, needed_for)
    rank = sorted(range(len(order)), key=order.__getitem__)
    return ImageBatch(
        tensors=np.stack([tensors[k] for k in rank]).astype(np.float32), source=printable_path(root),
        files=[kept[k] for k in rank], skipped=skipped,
        labels=np.asarray([kept_labels[k] for k in rank], dtype=np.int64) if labels is not None else None,
        sha256=_hash_batch(contract, [entries[k] for k in rank]),
    )


def image_folder_batch(root: str | Path, contract: Preprocess, count: int | None, seed: int = 0,
                       option: str = "--data", log: Log = _noop, minimum: int = 1,
                       needed_for: str = "") -> ImageBatch:
    """A seeded sample of `count` readable images from any folder (recursive), preprocessed.

    Unreadable files are replaced from the remaining ones (seeded, deterministic) until `count`
    images are read; fewer than `minimum` readable images in the whole folder is an error.
    """
    root = Path(root)
    files = find_images(root, option, log)
    order = draw_order(len(files), count, seed)
    batch = load_images([files[i] for i in order], contract, root, option, log, count=count,
                        minimum=minimum, needed_for=needed_for, sort_keys=order)
    if count is not None and len(batch) < count:
        log(f"warning: {option} {printable_path(root)} has {len(batch)} readable images, fewer than the {count} "
            "asked for; using all")
    return batch


def synthetic_batch(contract: Preprocess, count: int, seed: int = 0) -> ImageBatch:
    """Seeded image-like inputs: smooth colour fields plus texture, in 0-255, then normalized.

    Smooth fields exercise the network like photos do (large, correlated activations), unlike
    white noise, which the first convolutions mostly average away.
    """
    rng = np.random.default_rng(seed)
    h, w = contract.crop_size
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(3, 4, 4)).astype(np.float32)
        ys = np.linspace(0, 3, h, dtype=np.float32)
        xs = np.linspace(0, 3, w, dtype=np.float32)
        y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        c = coarse
        smooth = (c[:, y0][:, :, x0] * (1 - fy) * (1 - fx) + c[:, y0 + 1][:, :, x0] * fy * (1 - fx)
                  + c[:, y0][:, :, x0 + 1] * (1 - fy) * fx + c[:, y0 + 1][:, :, x0 + 1] * fy * fx)
        texture = rng.normal(0, 20, size=(3, h, w)).astype(np.float32)
        images.append(np.clip(smooth + texture, 0, 255))
    pixels = np.stack(images).astype(np.float32)
    return ImageBatch(tensors=contract.normalize(pixels), source="synthetic",
                      sha256=_hash_batch(contract, [f"synthetic:seed={seed}:n={count}"]))


def golden_batch(contract: Preprocess, data_dir: str | Path | None, count: int = 8, seed: int = 0,
                 log: Log = _noop, calib_dir: str | Path | None = None, calib_count: int = 0,
                 calib_seed: int = 0) -> ImageBatch:
    """The fixed inputs parity is judged on, in this order of preference:

    `--data` images when given; else, when a calibration sample of `calib_count` images is drawn
    from `calib_dir`, `count` other images of that folder (a trained model judged on photos like
    those it serves: int8 MobileNet-V3 follows float on real images, not on synthetic ones); else
    seeded synthetic images.
    """
    if data_dir is not None:
        return image_folder_batch(data_dir, contract, count, seed, option="--data", log=log, minimum=GOLDEN_MINIMUM,
                                  needed_for="random-init BatchNorm re-estimation and the parity statistics")
    if calib_dir is None:
        return synthetic_batch(contract, count, seed)
    held = held_out_batch(calib_dir, contract, count, calib_count, calib_seed, log)
    if held is not None:
        return held
    note = (f"synthetic: --calib-data {printable_path(Path(calib_dir))} has no readable images beyond the "
            f"calibration sample ({calib_count} asked for); pass --data DIR (or a larger --calib-data) for real golden images")
    log(f"golden inputs: {note}")
    return replace(synthetic_batch(contract, count, seed), note=note)


def held_out_batch(calib_dir: str | Path, contract: Preprocess, count: int, calib_count: int, calib_seed: int,
                   log: Log = _noop) -> ImageBatch | None:
    """Up to `count` images of `calib_dir` that the seeded calibration draw does not pick.

    Calibration reads `draw_order(files, calib_count, calib_seed)` from the front (its sample,
    then replacements for unreadable files); these are read from the back of the same order, so
    the two never meet while the folder has enough readable images for both (`check_held_out`
    confirms it once calibration is read). None when fewer than GOLDEN_MINIMUM spare images read.
    """
    root = Path(calib_dir)
    files = find_images(root, "--calib-data", log)
    spare = draw_order(len(files), calib_count, calib_seed)[calib_count:][::-1]
    if len(spare) < GOLDEN_MINIMUM:
        return None
    try:
        batch = load_images([files[i] for i in spare], contract, root, "--calib-data", log, count=count,
                            minimum=GOLDEN_MINIMUM, sort_keys=spare)
    except UsageError:  # the spare images do not read: as if there were none
        return None
    if len(batch) < count:
        log(f"warning: --calib-data {printable_path(root)} spares {len(batch)} readable images beyond the "
            f"calibration sample, fewer than the {count} golden inputs asked for; using them")
    return replace(batch, held_out_of="calibration")


def check_held_out(golden: ImageBatch, calibration_files: Sequence[str]) -> None:
    """Golden images held out of calibration must not be among the calibration images actually read."""
    if golden.held_out_of != "calibration":
        return
    shared = sorted(set(golden.files) & set(calibration_files))
    if shared:
        raise UsageError(f"--calib-data {golden.source}: {shared[0]} is both a calibration and a golden image "
                         f"({len(shared)} shared): too few readable images beyond the calibration sample",
                         "pass --data DIR with images for parity, or add readable images to --calib-data")


# ---- labeled sets ---------------------------------------------------------------------------

DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)
DEVKIT_CLASSES = 1000  # devkit ids 1..1000 are the ILSVRC2012 classes (leaf synsets)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in index order (sorted), as timm ships them."""
    from importlib import resources

    text = resources.files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class LabeledSet:
    """A labeled image list in its deterministic order, before any image is decoded.

    `layout` says how labels were found: "labels.csv", "imagefolder" or "devkit".
    """

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    layout: str
    classes_found: tuple[int, ...] = field(default=(), compare=False)  # every listed label, sampled or not

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, positions: Sequence[int]) -> "LabeledSet":
        return LabeledSet(self.root, tuple(self.files[i] for i in positions),
                          tuple(self.labels[i] for i in positions), self.layout, self.classes_found)

    def check_classes(self, num_classes: int) -> None:
        """The one check that needs the model: run once it is loaded, on the set already found."""
        check_classes(self.classes_found, num_classes)

    def listing_sha256(self, contract: Preprocess) -> str:
        """Identity of the list (names and labels, not file bytes): what shards of one set share."""
        return _hash_batch(contract, [f"{_relative(p, self.root)}:{lbl}" for p, lbl in zip(self.files, self.labels)])


def find_ground_truth(root: Path) -> Path | None:
    """The devkit ground-truth file in `root`, `root/data` or `root/ILSVRC2012_devkit_t12/data`."""
    for folder in (root, root / "data", root / "ILSVRC2012_devkit_t12" / "data"):
        if (folder / DEVKIT_GROUND_TRUTH).is_file():
            return folder / DEVKIT_GROUND_TRUTH
    return None


def devkit_id_to_wnid(meta_path: Path) -> dict[int, str]:
    """The devkit's 1-based ILSVRC2012_ID -> WNID map from its meta.mat (`synsets` struct array)."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta_path), squeeze_me=True, struct_as_record=False)["synsets"]
    except Exception as exc:  # scipy raises ValueError/KeyError/OSError for files that are not meta.mat
        raise UsageError(f"--eval-data: {meta_path}: not a readable devkit meta.mat ({type(exc).__name__}: {exc})",
                         "use data/meta.mat from ILSVRC2012_devkit_t12") from None
    return {int(s.ILSVRC2012_ID): str(s.WNID) for s in np.atleast_1d(synsets)}


def _devkit_pairs(root: Path, truth: Path, option: str) -> list[tuple[Path, int]]:
    """Flat ILSVRC2012_val_*.JPEG folder + devkit ground truth -> (file, torchvision class index).

    The ground-truth file holds 1-based devkit ids (line n: image n), which are NOT the class
    indices timm/torchvision models use (those follow the sorted wnid order); meta.mat next to
    the ground-truth file maps id -> wnid, and the wnid's position in the sorted list is the index.
    """
    images = {}
    for path in root.iterdir():
        match = DEVKIT_IMAGE.match(path.name)
        if match and path.is_file():
            images[int(match.group(1))] = path
    lines = [line.strip() for line in truth.read_text().splitlines() if line.strip()]
    if len(lines) != len(images):
        raise UsageError(f"{option}: {truth.name} has {len(lines)} labels but {root} holds {len(images)} "
                         "ILSVRC2012_val_*.JPEG images", "use the complete validation folder with its devkit file")
    meta = truth.parent / DEVKIT_META
    if not meta.is_file():
        raise UsageError(f"{option}: {meta} not found: devkit ids are not class indices",
                         "put the devkit's data/meta.mat beside the ground-truth file")
    id_to_wnid = devkit_id_to_wnid(meta)
    index_of = {w: i for i, w in enumerate(imagenet_wnids())}
    pairs = []
    for number in sorted(images):
        if not 1 <= number <= len(lines):
            raise UsageError(f"{option}: {images[number].name} has no line in {truth.name} "
                             f"({len(lines)} lines)", "use the complete validation folder with its devkit file")
        text = lines[number - 1]
        devkit_id = int(text) if text.isdigit() else -1
        if not 1 <= devkit_id <= DEVKIT_CLASSES or id_to_wnid.get(devkit_id) not in index_of:
            raise UsageError(f"{option}: {truth.name} line {number}: id {text!r} is not a devkit class id "
                             f"1..{DEVKIT_CLASSES} in {meta.name}", "use the ILSVRC2012 devkit's files")
        pairs.append((images[number], index_of[id_to_wnid[devkit_id]]))
    return pairs


def _csv_pairs(root: Path, csv_path: Path) -> list[tuple[Path, int]]:
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "class_index"} <= set(reader.fieldnames):
            raise UsageError(f"{csv_path}: needs the columns file,class_index", "fix the CSV header")
        return [(root / row["file"], int(row["class_index"])) for row in reader]


def _folder_pairs(root: Path, option: str) -> list[tuple[Path, int]]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subdirs:
        raise UsageError(f"{option} {root}: neither labels.csv, class subfolders nor devkit ground truth found",
                         "use an ImageFolder tree, add labels.csv (file,class_index), or ILSVRC2012_val_*.JPEG "
                         f"with {DEVKIT_GROUND_TRUTH} and meta.mat")
    pairs: list[tuple[Path, int]] = []
    wnid_index = None
    for sub in subdirs:
        if sub.name.isdigit():
            label = int(sub.name)
        else:
            wnid_index = wnid_index or {w: i for i, w in enumerate(imagenet_wnids())}
            if sub.name not in wnid_index:
                raise UsageError(f"{option}: class folder {sub.name!r} is neither an index nor an ImageNet wnid",
                                 "name class folders 0..N-1 or by wnid")
            label = wnid_index[sub.name]
        pairs.extend((f, label) for f in find_images(sub, option))
    return pairs


def labeled_files(root: str | Path, count: int | None = None, seed: int = 0, num_classes: int | None = None
                  ) -> LabeledSet:
    """Find a labeled set and draw its seeded sample, without decoding any image.

    Layouts: `labels.csv` (file,class_index,...); a flat ILSVRC2012 validation folder with the
    devkit's ground truth and meta.mat; an ImageFolder tree with class folders named by class
    index (`0`, `17`) or by ImageNet wnid.
    """
    root = Path(root)
    option = "--eval-data"
    if not root.is_dir():
        raise UsageError(f"{option} {root}: not a directory", "pass a folder with labels.csv or class subfolders")
    csv_path, truth = root / "labels.csv", find_ground_truth(root)
    if csv_path.exists():
        pairs, layout = _csv_pairs(root, csv_path), "labels.csv"
    elif truth is not None:
        pairs, layout = _devkit_pairs(root, truth, option), "devkit"
    else:
        pairs, layout = _folder_pairs(root, option), "imagefolder"
    if not pairs:
        raise UsageError(f"{option} {root}: no labeled images found", "check labels.csv or the class folders")
    found = tuple(sorted({lbl for _, lbl in pairs}))
    if num_classes is not None:
        check_classes(found, num_classes)
    missing = [p for p, _ in pairs if not p.exists()]
    if missing:
        raise UsageError(f"{option}: {len(missing)} listed files do not exist (first: {missing[0]})",
                         "fix labels.csv")
    chosen = sample_files([p for p, _ in pairs], count, seed)
    label_of = {p: lbl for p, lbl in pairs}
    return LabeledSet(root, tuple(chosen), tuple(label_of[p] for p in chosen), layout, found)


def check_classes(labels: Sequence[int], num_classes: int) -> None:
    """Refuse labels outside the model's classifier (labels: the set's distinct labels, sorted)."""
    bad = [lbl for lbl in labels if not 0 <= lbl < num_classes]
    if bad:
        raise UsageError(f"--eval-data: labels {bad[:5]} are outside the model's {num_classes} classes",
                         "use labels that match the model's classifier, or --num-classes")


def labeled_batch(root: str | Path, contract: Preprocess, count: int | None = None, seed: int = 0,
                  num_classes: int | None = None, log: Log = _noop) -> ImageBatch:
    """A labeled set (see `labeled_files`), decoded into memory: for small sets only."""
    labeled = labeled_files(root, count, seed, num_classes)
    return load_images(list(labeled.files), contract, labeled.root, "--eval-data", log, labels=list(labeled.labels))
