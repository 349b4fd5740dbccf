"""Calibration files the way `hb_mapper makertbin` reads them.

With `preprocess_on: False` (the recommended setting) the toolchain reads every file in
`cal_data_dir` with `numpy.fromfile` as one input tensor of `input_type_train` / layout /
shape: here raw float32 NCHW (1, 3, H, W) RGB pixels in 0-255, resized and cropped by the
contract but NOT normalized (mean/scale are compiled into the model). The vendor's samples
write one `.rgb` file per image into `calibration_data_rgb_f32/` (`data_preprocess.py
--pic_ext .rgb --saved_data_type float32`), and ask for about 100 images.
Source: https://github.com/D-Robotics/rdk_doc/blob/main/i18n/en/docusaurus-plugin-content-docs/current/07_Advanced_development/04_toolchain_development/intermediate/ptq_process.md
("Preparing Calibration Data").
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess

MIN_IMAGES = 100  # the toolchain wants 100-300 calibration samples
MAX_IMAGES = 300
SUFFIX = ".rgb"   # what the vendor's data_preprocess.py writes (--pic_ext .rgb)
_OURS = re.compile(r"^\d{4,}_.+" + re.escape(SUFFIX) + r"$")


@dataclass(frozen=True)
class CalibrationFiles:
    """What was written: the files in toolchain order, one hash over all of them, a warning."""

    files: tuple[Path, ...]
    sha256: str
    warning: str | None


def calibration_file_name(index: int, image: str | Path) -> str:
    """`0007_cat.rgb`: the index keeps the order stable and the names unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem) or "image"
    return f"{index:04d}_{stem}{SUFFIX}"


def count_warning(count: int) -> str | None:
    """A warning when the set is outside the toolchain's 100-300 image range."""
    if count < MIN_IMAGES:
        return (f"only {count} calibration image(s): hb_mapper calibration wants {MIN_IMAGES}-{MAX_IMAGES} "
                "images from the training/validation distribution; quantization ranges may be poor")
    if count > MAX_IMAGES:
        return f"{count} calibration images: more than {MAX_IMAGES} slows calibration without helping it"
    return None


def files_sha256(files: Sequence[Path]) -> str:
    """One digest over the names and bytes of `files`, in order (goes into the manifest)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(out_dir.iterdir())
    if entries and overwrite:
        for entry in entries:
            if entry.is_file() and _OURS.match(entry.name):
                entry.unlink()
        entries = sorted(out_dir.iterdir())
    if entries:
        # hb_mapper reads every file in cal_data_dir: a stray file would become a sample
        raise UsageError(f"calibration directory {out_dir} is not empty ({entries[0].name}, ...)",
                         "use an empty directory (or overwrite=True to replace earlier calibration files)")


def write_calibration_files(
    images: Sequence[str | Path],
    preprocess: Preprocess,
    out_dir: str | Path,
    *,
    normalized: bool = False,
    overwrite: bool = False,
) -> CalibrationFiles:
    """Write one raw float32 (1, 3, H, W) file per image into `out_dir`.

    Pixels come from `preprocess.load_pixels` (RGB, 0-255). `normalized=True` writes the
    contract's normalized tensor instead: that is what a `featuremap` input (norm_type
    no_preprocess) must be calibrated with. Each file is written to a temporary name and
    renamed, so an interrupted run leaves no half-written sample behind.
    """
    if not images:
        raise UsageError("no calibration images given", "pass 100-300 images from the validation set")
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    written = []
    for index, image in enumerate(images):
        pixels = preprocess.load_pixels(image)
        tensor = preprocess.normalize(pixels) if normalized else pixels
        path = out / calibration_file_name(index, image)
        tmp = path.with_name(path.name + ".tmp")
        np.ascontiguousarray(tensor[None], dtype=np.float32).tofile(tmp)
        os.replace(tmp, path)
        written.append(path)
    return CalibrationFiles(tuple(written), files_sha256(written), count_warning(len(written)))


def read_calibration_file(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """Load one calibration file back as the toolchain does (`numpy.fromfile`, float32)."""
    data = np.fromfile(path, dtype=np.float32)
    expected = int(np.prod(shape))
    if data.size != expected:
        raise UsageError(f"{path}: holds {data.size} float32 values, expected {expected} for shape {tuple(shape)}")
    return data.reshape(tuple(shape))
