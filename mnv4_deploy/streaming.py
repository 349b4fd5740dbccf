"""Decode images in a pool of worker processes, chunk by chunk, in a fixed order.

Evaluation and calibration at ImageNet scale cannot hold every image in memory: a worker pool
decodes and preprocesses chunks of files through the one `Preprocess` contract (the very
`decode_image` the in-memory path calls, so the numbers are the same), and chunks come back in
submission order whatever the workers' timing. At most `workers + 2` chunks are decoded ahead
of the consumer, so memory is bounded by the chunk size, not by the number of images.

Workers are started with 'forkserver' (Linux) or 'spawn', never 'fork': the parent has torch,
onnxruntime and TensorFlow loaded, whose thread pools do not survive a fork. They also skip
re-importing the parent's `__main__` (multiprocessing's default): a script or test runner that
imports torch at the top would otherwise cost every worker hundreds of MB; the decode function
lives in this module, so the workers never need it.

Decoded tensors come back through shared memory, not the result pipe: the pool is given a few
chunk-sized slots (a `RawArray`: a file in /dev/shm when it has room, else in the temp folder,
sized by the chunk, never by N); a worker decodes straight into the slot its job names and
returns only positions, hashes and skips. Pickling 600 KB per 224 px image through the pipe
and unpickling it in the consumer's result thread cost the consumer about 1.3 ms of CPU per
image, a fifth of what the reference and one target spend on it (docs/benchmarks.md,
"Evaluation at scale"). Each chunk is copied out of its slot (0.03 ms per 224 px image) before
the slot takes the next job, so a consumer may keep the chunks it was given.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import multiprocessing.spawn
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .data import file_sha256
from .errors import UnreadableImage, UsageError
from .preprocess import Preprocess, decode_image

DEFAULT_WORKERS = 2
START_METHODS = ("forkserver", "spawn")
SHARED_SLOTS_MAX_BYTES = 1 << 30  # chunks larger than this in all go through the result pipe instead

_worker_slots: np.ndarray | None = None  # in a worker: the pool's slots, (slots, chunk, 3, H, W) float32


@dataclass
class DecodedChunk:
    """One chunk of a file list: the readable images' tensors and what could not be read."""

    chunk: int  # chunk number in the whole list
    positions: list[int]  # positions (in the whole list) of the readable images, in order
    tensors: np.ndarray  # (len(positions), 3, H, W) float32
    sha256: list[str]  # file sha256 of each readable image
    skipped: list[tuple[int, str]]  # (position, reason) of unreadable images


def decode_chunk(contract: Preprocess, chunk: int, positions: Sequence[int], paths: Sequence[str],
                 into: np.ndarray | None = None) -> DecodedChunk:
    """Decode one chunk (runs in a worker); an unreadable image is skipped with its reason.

    With `into` (a slot with room for the whole chunk), the readable images are written to its
    first rows and the returned chunk's `tensors` is empty: the caller reads them from the slot.
    """
    tensors, kept, shas, skipped = [], [], [], []
    for position, path in zip(positions, paths):
        try:
            tensor = decode_image(path, contract)
        except UnreadableImage as exc:
            skipped.append((position, exc.reason))
            continue
        if into is None:
            tensors.append(tensor)
        else:
            into[len(kept)] = tensor
        kept.append(position)
        shas.append(file_sha256(Path(path)))
    h, w = contract.crop_size
    stacked = np.stack(tensors).astype(np.float32, copy=False) if tensors else np.zeros((0, 3, h, w), np.float32)
    return DecodedChunk(chunk, kept, stacked, shas, skipped)


def _attach_slots(raw: Any, shape: tuple[int, ...]) -> None:
    """Pool initializer: view the shared slots as float32 arrays (no copy)."""
    global _worker_slots
    _worker_slots = np.frombuffer(raw, dtype=np.float32).reshape(shape)


def decode_chunk_to_slot(slot: int, contract: Preprocess, chunk: int, positions: Sequence[int],
                         paths: Sequence[str]) -> DecodedChunk:
    """`decode_chunk` into shared slot `slot` (runs in a worker started with `_attach_slots`)."""
    assert _worker_slots is not None, "worker started without shared slots"
    return decode_chunk(contract, chunk, positions, paths, into=_worker_slots[slot])


def chunk_ranges(count: int, chunk_size: int) -> list[range]:
    """Positions of every chunk of a `count`-long list: the grid shards and resumes align to."""
    return [range(i, min(i + chunk_size, count)) for i in range(0, count, chunk_size)]


def default_start_method() -> str:
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def check_workers(workers: int) -> int:
    if not 0 <= workers <= 64:
        raise UsageError(f"--eval-workers {workers}: must be between 0 and 64",
                         "0 decodes in the main process; one per core is a good start")
    return workers


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Start processes that do not re-import `__main__` (see the module docstring)."""
    original = multiprocessing.spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    multiprocessing.spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        multiprocessing.spawn.get_preparation_data = original


class ChunkDecoder:
    """Decode chosen chunks of a file list with `workers` processes (0: in this process).

    Use as a context manager; `chunks()` yields `DecodedChunk`s in the order asked for.
    """

    def __init__(self, files: Sequence[Path], contract: Preprocess, chunk_size: int, workers: int = DEFAULT_WORKERS,
                 start_method: str | None = None):
        self.files = [str(p) for p in files]
        self.contract = contract
        self.ranges = chunk_ranges(len(self.files), chunk_size)
        self.workers = check_workers(workers)
        self.start_method = start_method or default_start_method()
        self.ahead = self.workers + 2  # chunks submitted and not yet consumed
        self._pool: multiprocessing.pool.Pool | None = None
        self._slots: np.ndarray | None = None  # shared (ahead, chunk, 3, H, W); None: results come by pipe

    def _slot_shape(self) -> tuple[int, ...]:
        h, w = self.contract.crop_size
        return (self.ahead, max((len(r) for r in self.ranges), default=0), 3, h, w)

    def __enter__(self) -> "ChunkDecoder":
        if self.workers > 0:
            context = multiprocessing.get_context(self.start_method)
            if self.start_method == "forkserver":
                context.set_forkserver_preload(["numpy", "PIL.Image", "mnv4_deploy.data"])
            shape = self._slot_shape()
            floats = int(np.prod(shape))
            initializer, initargs = None, ()
            if 0 < floats * 4 <= SHARED_SLOTS_MAX_BYTES:
                raw = context.RawArray("f", floats)
                self._slots = np.frombuffer(raw, dtype=np.float32).reshape(shape)
                initializer, initargs = _attach_slots, (raw, shape)
            with _without_main_module():  # a Pool starts all its workers here, and only here
                self._pool = context.Pool(self.workers, initializer, initargs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()  # every wanted chunk was consumed, or the consumer stopped early
            self._pool.join()
            self._pool = None
        self._slots = None

    def _job(self, chunk: int) -> tuple:
        positions = list(self.ranges[chunk])
        return (self.contract, chunk, positions, [self.files[i] for i in positions])

    def _submit(self, chunk: int, slot: int) -> multiprocessing.pool.AsyncResult:
        assert self._pool is not None
        if self._slots is None:
            return self._pool.apply_async(decode_chunk, self._job(chunk))
        return self._pool.apply_async(decode_chunk_to_slot, (slot, *self._job(chunk)))

    def chunks(self, wanted: Sequence[int]) -> Iterator[DecodedChunk]:
        """Decoded chunks in the order of `wanted`, at most `workers + 2` decoded ahead.

        Each chunk's `tensors` is its own array: a consumer may keep it after asking for the next.
        """
        if self._pool is None:
            for chunk in wanted:
                yield decode_chunk(*self._job(chunk))
            return
        pending: deque[tuple[int, multiprocessing.pool.AsyncResult]] = deque()
        todo = iter(wanted)
        for slot, chunk in zip(range(self.ahead), todo):
            pending.append((slot, self._submit(chunk, slot)))
        while pending:
            slot, result = pending.popleft()
            done = result.get()
            if self._slots is not None:  # copy out before the slot is handed to the next job
                done.tensors = self._slots[slot, :len(done.positions)].copy()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((slot, self._submit(nxt, slot)))
            yield done
