"""Calibration sets larger than memory: the same images, hash and plan, streamed from disk.

`data.image_folder_batch` decodes every calibration image into one array (fine at the recipe's
300, about 3 GB at 5,000 and 224 px). Above `IN_MEMORY_LIMIT` images, `calibration_set` returns a
`StreamedCalibration` instead: one scan through the worker pool picks exactly the images the
in-memory path would (the seeded draw, unreadable files replaced from the rest, then the
folder's order), hashes them the same way and keeps only the first `held` tensors in memory. The plan's
streaming steps (bias absorption, range observers) then re-read the images in batches with the
same boundaries as slicing the array, so the plan is the same; the layer-by-layer steps use the
held prefix up to their own `correction_size`, as they slice it from the array today; converters
that feed a few calibration images to a backend take them from the same prefix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import data as datasets
from .errors import DeployError
from .preprocess import Preprocess, printable_path
from .streaming import DEFAULT_WORKERS, ChunkDecoder

IN_MEMORY_LIMIT = 512  # calibration images decoded into one array; more are streamed
SCAN_CHUNK = 64

Log = Callable[[str], None]


@dataclass
class StreamedCalibration:
    """Calibration images kept on disk; duck-types `data.ImageBatch` for the plan and converters.

    `tensors` holds only the first `held` images (what converters and the layer-by-layer steps
    slice); `batches(size)` yields every image, in order, `size` at a time.
    """

    tensors: np.ndarray
    source: str
    paths: list[Path]
    contract: Preprocess
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sha256: str = ""
    labels: None = None
    workers: int = DEFAULT_WORKERS

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self), "sha256": self.sha256, "skipped": self.skipped,
                "labeled": False, "streamed": True, "held_in_memory": int(len(self.tensors))}

    def head(self, count: int) -> np.ndarray:
        if count > len(self.tensors):
            raise ValueError(f"only {len(self.tensors)} calibration images are held in memory, {count} asked for")
        return self.tensors[:count]

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Every image, `size` at a time, in order: the batches slicing the whole array would give."""
        with ChunkDecoder(self.paths, self.contract, max(1, size), self.workers) as decoder:
            for chunk in decoder.chunks(range(len(decoder.ranges))):
                if chunk.skipped:
                    position, reason = chunk.skipped[0]
                    raise DeployError(f"calibration image {printable_path(self.paths[position])} became unreadable "
                                      f"during the run ({reason})", "keep the calibration folder unchanged while it runs")
                yield chunk.tensors


def calibration_set(root: str | Path, contract: Preprocess, count: int, seed: int, *, option: str = "--calib-data",
                    log: Log = lambda _m: None, minimum: int = 1, needed_for: str = "", held: int = 256,
                    in_memory_limit: int | None = None, workers: int = DEFAULT_WORKERS
                    ) -> "datasets.ImageBatch | StreamedCalibration":
    """The run's calibration images: in memory up to `in_memory_limit`, streamed above it."""
    if count <= (IN_MEMORY_LIMIT if in_memory_limit is None else in_memory_limit):
        return datasets.image_folder_batch(root, contract, count, seed, option=option, log=log, minimum=minimum,
                                           needed_for=needed_for)
    root = Path(root)
    files = datasets.find_images(root, option, log)
    draw = datasets.draw_order(len(files), count, seed)
    ordered = [files[i] for i in draw]
    kept: list[tuple[int, Path, str]] = []  # (index in the folder, path, hash entry)
    skipped: list[str] = []
    with ChunkDecoder(ordered, contract, SCAN_CHUNK, workers) as decoder:
        for chunk in decoder.chunks(range(len(decoder.ranges))):
            reasons = dict(chunk.skipped)
            shas = dict(zip(chunk.positions, chunk.sha256))
            for position in decoder.ranges[chunk.chunk]:
                if len(kept) >= count:
                    break
                rel = datasets._relative(ordered[position], root)
                if position in reasons:
                    skipped.append(printable_path(rel))
                    log(f"warning: skipping unreadable image {printable_path(rel)}: {reasons[position]}")
                    continue
                kept.append((draw[position], ordered[position], f"{rel}:{shas[position]}"))
            if len(kept) >= count:
                break
    datasets.check_readable_count(option, root, len(kept), len(skipped), minimum, needed_for)
    if len(kept) < count:
        log(f"warning: {option} {printable_path(root)} has {len(kept)} readable images, fewer than the {count} "
            "asked for; using all")
    kept.sort(key=lambda item: item[0])  # back in the folder's order, as the in-memory path puts them
    paths = [path for _, path, _ in kept]
    with ChunkDecoder(paths[:held], contract, SCAN_CHUNK, workers) as decoder:
        head = [c.tensors for c in decoder.chunks(range(len(decoder.ranges)))]
    return StreamedCalibration(
        tensors=np.concatenate(head).astype(np.float32), source=printable_path(root), paths=paths, contract=contract,
        files=[printable_path(datasets._relative(p, root)) for p in paths], skipped=skipped,
        sha256=datasets._hash_batch(contract, [entry for _, _, entry in kept]), workers=workers)
