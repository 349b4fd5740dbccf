"""One pass over a labeled set for the reference and every target, kept as per-image records.

The labeled images are decoded chunk by chunk by `streaming.ChunkDecoder`; each chunk feeds the
reference model and every target's runner, and only per-image records survive it (top-1/top-5
correctness and the top-5 classes, per side). Every accuracy figure is computed from those records
(`validate.accuracy_from_records`), so memory is bounded by the chunk size, not the set size.

Merging shards is `eval_merge`. Records live under `--out/eval/`: one file per finished chunk while the pass runs (written
atomically, so `--resume` continues from them), then `reference.npz` and `<target>.npz` in image
order plus `meta.json` (what run they belong to). Chunks sit on a fixed grid of the sampled list,
and a shard (`--eval-shard K/N`) is a contiguous block of chunks, so every image meets the same
batch in a sharded and an unsharded run and merged shards equal one run byte for byte.

The reference's records do not depend on the targets, so a later run over the same images (e.g.
with more targets) takes them from the earlier run's `reference.npz` instead of
running the reference again, when a strict key matches (`EvalSpec.reference_key`: model weights,
recipe, contract, image list, chunk grid, the reference runner) and each image's file hash is the
recorded one; anything else runs the reference, and says why.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .artifacts import TMP_PREFIX, write_json_atomic
from .data import LabeledSet, _hash_batch, _relative
from .errors import UsageError
from .preprocess import Preprocess, printable_path
from .streaming import ChunkDecoder, DecodedChunk, chunk_ranges
from .validate import AccuracyResult, accuracy_from_records, correct_flags

EVAL_DIR = "eval"
CHUNKS_DIR = "chunks"
META = "meta.json"
REFERENCE = "reference"
EVAL_CHUNK = 32  # images per chunk: the batch every model sees (and the shard/resume grid)
PROGRESS_SECONDS = 10.0
SMALL_PASS_CHUNKS = 2  # a pass this short decodes in the main process
FORMAT = 1

Run = Callable[[np.ndarray], np.ndarray]
Log = Callable[[str], None]
COMMON = ("index", "label", "file", "file_sha256")
PER_SIDE = ("top1", "top5", "top5_classes")


# ---- shards ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardSpec:
    """The K-th (1-based) of N contiguous blocks of chunks."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        k, sep, n = text.strip().partition("/")
        if not sep or not k.isdigit() or not n.isdigit():
            raise UsageError(f"--eval-shard {text!r}: expected K/N, e.g. 1/4", "K and N are whole numbers, 1 <= K <= N")
        spec = cls(int(k), int(n))
        if spec.count < 1 or not 1 <= spec.index <= spec.count:
            raise UsageError(f"--eval-shard {text}: K must be between 1 and N, and N at least 1",
                             "e.g. --eval-shard 1/4 ... 4/4")
        return spec

    def chunk_ids(self, total_chunks: int) -> list[int]:
        start = (self.index - 1) * total_chunks // self.count
        return list(range(start, self.index * total_chunks // self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# ---- deterministic record files -------------------------------------------------------------

def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """An uncompressed .npz with fixed entry order and timestamps (np.savez stamps the clock), atomically."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: not a readable records file ({exc})", "re-run the evaluation") from None


def empty_common() -> dict[str, np.ndarray]:
    return {"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64), "file": np.zeros(0, "U1"),
            "file_sha256": np.zeros(0, "U64")}


def empty_side(k: int) -> dict[str, np.ndarray]:
    return {"top1": np.zeros(0, bool), "top5": np.zeros(0, bool), "top5_classes": np.zeros((0, k), np.int32)}


def side_records(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """What survives of one side's logits on one chunk."""
    logits = np.asarray(logits).reshape(len(labels), -1)
    top1, top5 = correct_flags(logits, labels)
    k = min(5, logits.shape[1])
    classes = np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int32)
    return {"top1": top1, "top5": top5, "top5_classes": classes}


# ---- the pass -------------------------------------------------------------------------------

def shard_chunk_ids(images: int, chunk_size: int, shard: ShardSpec | None) -> list[int]:
    """The chunks of an `images`-long list that `shard` evaluates; more shards than chunks is refused."""
    total = len(chunk_ranges(images, chunk_size))
    if shard and shard.count > total:
        raise UsageError(f"--eval-shard {shard}: {images} images make only {total} chunk(s) of "
                         f"{chunk_size}, fewer than {shard.count} shards", f"use at most {total} shards")
    return shard.chunk_ids(total) if shard else list(range(total))


@dataclass
class EvalSpec:
    """What one streaming evaluation covers and which run it belongs to."""

    labeled: LabeledSet
    contract: Preprocess
    identity: dict[str, Any]  # fields a resume must match, and merged shards must share
    shard: ShardSpec | None = None
    chunk_size: int = EVAL_CHUNK
    reference_key: dict[str, Any] | None = None  # what the reference's records depend on; None: never reused

    def total_chunks(self) -> int:
        return len(chunk_ranges(len(self.labeled), self.chunk_size))

    def chunk_ids(self) -> list[int]:
        return shard_chunk_ids(len(self.labeled), self.chunk_size, self.shard)

    def run_fields(self) -> dict[str, Any]:
        return {**self.identity, "eval_images": len(self.labeled), "chunk_size": self.chunk_size,
                "shard_count": self.shard.count if self.shard else 1}

    def full_reference_key(self) -> dict[str, Any] | None:
        """The reference key plus the sample and chunk grid the records' positions refer to."""
        if self.reference_key is None:
            return None
        return {**self.reference_key, "eval_images": len(self.labeled), "chunk_size": self.chunk_size,
                "shard": str(self.shard) if self.shard else None}


@dataclass
class EvalRecords:
    """Per-image records of one evaluation (a shard, a run, or merged shards)."""

    root: str
    layout: str
    common: dict[str, np.ndarray]
    sides: dict[str, dict[str, np.ndarray]]  # "reference" and each target
    skipped: list[str] = field(default_factory=list)
    shard: str | None = None

    def targets(self) -> list[str]:
        return [s for s in self.sides if s != REFERENCE]

    def accuracy(self, target: str) -> AccuracyResult:
        ref, out = self.sides[REFERENCE], self.sides[target]
        return accuracy_from_records(ref["top1"], ref["top5"], out["top1"], out["top5"])

    def sha256(self, contract_sha256: str) -> str:
        """The labeled batch hash of the in-memory path: contract + `file:sha256` of each image read."""
        entries = [f"{f}:{h}" for f, h in zip(self.common["file"].tolist(), self.common["file_sha256"].tolist())]
        return _hash_batch(_ContractHash(contract_sha256), entries)

    def describe(self, contract_sha256: str) -> dict[str, Any]:
        ref = self.sides[REFERENCE]
        count = len(ref["top1"])
        return {"source": self.root, "count": count, "sha256": self.sha256(contract_sha256), "skipped": self.skipped,
                "labeled": True, "layout": self.layout, "shard": self.shard, "records": EVAL_DIR,
                "reference_top1": round(100.0 * float(ref["top1"].mean()), 4) if count else 0.0,
                "reference_top5": round(100.0 * float(ref["top5"].mean()), 4) if count else 0.0}


@dataclass(frozen=True)
class _ContractHash:
    """Stands in for a `Preprocess` where only its sha256 is known (records read back)."""

    value: str

    def sha256(self) -> str:
        return self.value


def first_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            return key
    return None


def describe_value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _prepare_dir(eval_dir: Path, spec: EvalSpec, resume: bool, log: Log) -> tuple[dict[str, Any], set[int]]:
    """The meta for this pass and the chunks already recorded (only with --resume)."""
    run = {**spec.run_fields(), "shard": str(spec.shard) if spec.shard else None}
    meta_path = eval_dir / META
    if resume and meta_path.exists():
        stored = json.loads(meta_path.read_text())
        differs = first_difference(stored.get("run", {}), run)
        if differs is not None:
            raise UsageError(f"--resume: {eval_dir} holds records of another run: {differs} differs "
                             f"(recorded {describe_value(stored.get('run', {}).get(differs))}, "
                             f"now {describe_value(run.get(differs))})",
                             "resume with the same model, recipe, contract, targets and data, or use a fresh --out")
        done = {int(p.stem) for p in (eval_dir / CHUNKS_DIR).glob("*.npz")} if not stored.get("complete") else set()
        log(f"evaluation: resuming, {len(done)} chunk(s) already recorded" if not stored.get("complete")
            else "evaluation: resuming, records already complete")
        return stored, done
    if resume:
        log(f"evaluation: --resume but no records in {eval_dir}; starting from the beginning")
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    (eval_dir / CHUNKS_DIR).mkdir(parents=True)
    meta = {"tool": "mnv4-deploy", "kind": "eval-records", "format": FORMAT, "complete": False, "run": run,
            "reference_key": spec.full_reference_key(), "root": str(spec.labeled.root), "layout": spec.labeled.layout,
            "contract_sha256": spec.contract.sha256(), "skipped": []}
    write_json_atomic(meta_path, meta)
    return meta, set()


class StoredReference:
    """An earlier run's reference records, looked up by image position and checked by file hash."""

    def __init__(self, records: Mapping[str, np.ndarray]):
        self.row = {int(i): n for n, i in enumerate(records["index"].tolist())}
        self.sha256 = records["file_sha256"]
        self.sides = {key: records[key] for key in PER_SIDE}
        self.reused = 0

    def for_chunk(self, decoded: DecodedChunk) -> dict[str, np.ndarray] | None:
        """The chunk's reference records, or None unless every image is recorded with the same file hash."""
        rows = [self.row.get(p) for p in decoded.positions]
        if not rows or any(r is None or self.sha256[r] != h for r, h in zip(rows, decoded.sha256)):
            return None
        self.reused += len(rows)
        return {key: value[rows] for key, value in self.sides.items()}


def reusable_reference(source: Path, spec: EvalSpec, log: Log) -> StoredReference | None:
    """`source`'s reference records when they were made under this spec's reference key, else None (said why)."""
    key = spec.full_reference_key()
    meta_path = source / META
    if key is None or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        log(f"evaluation: reference records in {source} not reused: {META} is unreadable")
        return None
    if not meta.get("complete") or not (source / f"{REFERENCE}.npz").is_file():
        return None
    stored = meta.get("reference_key") or {}
    differs = first_difference(stored, key)
    if differs is not None:
        log(f"evaluation: reference records in {source} not reused: {differs} differs "
            f"(recorded {describe_value(stored.get(differs))}, now {describe_value(key.get(differs))})")
        return None
    records = read_npz(source / f"{REFERENCE}.npz")
    if any(k not in records for k in ("index", "file_sha256", *PER_SIDE)):
        log(f"evaluation: reference records in {source} not reused: {REFERENCE}.npz lacks per-image fields")
        return None
    return StoredReference(records)


def _chunk_arrays(spec: EvalSpec, decoded: DecodedChunk, reference: Run, runners: Mapping[str, Run],
                  seconds: dict[str, float], beside: ThreadPoolExecutor,
                  stored: StoredReference | None = None) -> dict[str, np.ndarray]:
    """One chunk's records; the reference runs in `beside` while the targets run here.

    The reference (PyTorch on one thread) and the targets' runtimes use different cores, so
    overlapping them shortens the pass; each side still sees exactly the chunk's images. With
    `stored` records covering the chunk, the reference's side is taken from them instead.
    """
    root = spec.labeled.root
    positions = np.asarray(decoded.positions, np.int64)
    labels = np.asarray([spec.labeled.labels[i] for i in decoded.positions], np.int64)
    arrays: dict[str, np.ndarray] = {
        "index": positions, "label": labels,
        "file": np.asarray([_relative(spec.labeled.files[i], root) for i in decoded.positions], dtype=str),
        "file_sha256": np.asarray(decoded.sha256, dtype="U64"),
        "skipped_file": np.asarray([printable_path(_relative(spec.labeled.files[i], root)) for i, _ in decoded.skipped],
                                   dtype=str),
        "skipped_reason": np.asarray([r for _, r in decoded.skipped], dtype=str),
    }
    if len(positions):
        def timed(side: str, run: Run) -> tuple[str, np.ndarray, float]:
            started = time.perf_counter()
            return side, run(decoded.tensors), time.perf_counter() - started

        recorded = stored.for_chunk(decoded) if stored is not None else None
        pending = beside.submit(timed, REFERENCE, reference) if recorded is None else None
        results = [timed(side, run) for side, run in runners.items()]
        for side, logits, took in [pending.result(), *results] if pending is not None else results:
            seconds[side] = seconds.get(side, 0.0) + took
            for key, value in side_records(logits, labels).items():
                arrays[f"{side}.{key}"] = value
        for key, value in (recorded or {}).items():
            arrays[f"{REFERENCE}.{key}"] = value
    return arrays


def concat(parts: Sequence[np.ndarray], empty: np.ndarray) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else empty


def _assemble(chunk_files: Sequence[dict[str, np.ndarray]], sides: Sequence[str], k: int
              ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], list[str]]:
    no_common, no_side = empty_common(), empty_side(k)
    common = {key: concat([c[key] for c in chunk_files], no_common[key]) for key in COMMON}
    per_side = {side: {key: concat([c[f"{side}.{key}"] for c in chunk_files if f"{side}.{key}" in c],
                                   no_side[key]) for key in PER_SIDE} for side in sides}
    skipped = [f"{f}: {r}" for c in chunk_files for f, r in zip(c["skipped_file"].tolist(),
                                                                 c["skipped_reason"].tolist())]
    return common, per_side, skipped


def write_records(eval_dir: Path, common: Mapping[str, np.ndarray], sides: Mapping[str, Mapping[str, np.ndarray]]
                  ) -> None:
    """`reference.npz` (with the per-image file, label and hash) and one `<target>.npz` per target."""
    for side, arrays in sides.items():
        payload = {**arrays, "index": common["index"]}
        if side == REFERENCE:
            payload.update(common)
        write_npz(eval_dir / f"{side}.npz", payload)


def load_records(eval_dir: Path) -> EvalRecords:
    """Read finished records (a run's, a shard's or merged) back."""
    meta_path = eval_dir / META
    if not meta_path.is_file():
        raise UsageError(f"{eval_dir}: no evaluation records ({META} missing)", "pass an --out of a run with --eval-data")
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        raise UsageError(f"{eval_dir}: the evaluation did not finish", "finish it with --resume, then merge")
    ref = read_npz(eval_dir / f"{REFERENCE}.npz")
    common = {key: ref.pop(key) for key in COMMON}
    sides = {REFERENCE: ref}
    for target in meta["targets"]:
        arrays = read_npz(eval_dir / f"{target}.npz")
        arrays.pop("index")
        sides[target] = arrays
    return EvalRecords(meta["root"], meta["layout"], common, sides, meta.get("skipped", []), meta["run"].get("shard"))


class _Rate:
    """images/s and ETA lines, at most one per PROGRESS_SECONDS."""

    def __init__(self, total: int, log: Log):
        self.total, self.done, self.log = total, 0, log
        self.started = self.last = time.perf_counter()

    def add(self, images: int, final: bool = False) -> None:
        self.done += images
        now = time.perf_counter()
        if not final and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log(f"evaluation: {self.done}/{self.total} images, {rate:.1f} images/s, ETA {eta:.0f} s")


def run_evaluation(spec: EvalSpec, reference: Run, runners: Mapping[str, Run], out_dir: Path, *,
                   workers: int = 2, resume: bool = False, log: Log = print,
                   reference_from: Path | None = None) -> EvalRecords:
    """Stream this spec's chunks once through the reference and every runner; write and return the records.

    Reference records are reused from `reference_from` (an earlier run's `eval/` folder; default:
    this run's own, before it is replaced) when their key matches (module docstring).
    """
    eval_dir = out_dir / EVAL_DIR
    stored = None if resume else reusable_reference(reference_from or eval_dir, spec, log)
    meta, done = _prepare_dir(eval_dir, spec, resume, log)
    sides = [REFERENCE, *runners]
    if not meta.get("complete"):
        wanted = spec.chunk_ids()
        todo = [c for c in wanted if c not in done]
        ranges = chunk_ranges(len(spec.labeled), spec.chunk_size)
        rate = _Rate(sum(len(ranges[c]) for c in todo), log)
        seconds: dict[str, float] = {}
        pool = workers if len(todo) > SMALL_PASS_CHUNKS else 0  # starting processes costs more than 2 chunks
        with ChunkDecoder(spec.labeled.files, spec.contract, spec.chunk_size, pool) as decoder, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnv4-reference") as beside:
            for decoded in decoder.chunks(todo):
                for position, reason in decoded.skipped:
                    log(f"warning: skipping unreadable image "
                        f"{printable_path(_relative(spec.labeled.files[position], spec.labeled.root))}: {reason}")
                write_npz(eval_dir / CHUNKS_DIR / f"{decoded.chunk:06d}.npz",
                          _chunk_arrays(spec, decoded, reference, runners, seconds, beside, stored))
                rate.add(len(ranges[decoded.chunk]))
        rate.add(0, final=True)
        if stored is not None:
            log(f"evaluation: reference records of {stored.reused} image(s) reused from "
                f"{reference_from or eval_dir} (same model, recipe, contract, images and file hashes)")
        if seconds:
            log("evaluation: seconds per side (model time; the reference overlaps the targets): "
                + ", ".join(f"{side} {value:.1f}" for side, value in seconds.items()))
        chunk_files = [read_npz(eval_dir / CHUNKS_DIR / f"{c:06d}.npz") for c in wanted]
        common, per_side, skipped = _assemble(chunk_files, sides, k=min(5, _classes(chunk_files)))
        if not len(common["index"]):
            raise UsageError(f"--eval-data {spec.labeled.root}: none of the {sum(len(ranges[c]) for c in wanted)} "
                             "images of this evaluation could be read", "check the files are valid jpg/png images")
        write_records(eval_dir, common, per_side)
        meta.update(complete=True, skipped=skipped, targets=list(runners), count=int(len(common["index"])),
                    model_seconds={side: round(value, 2) for side, value in seconds.items()},
                    reference_reused=stored.reused if stored is not None else 0)
        write_json_atomic(eval_dir / META, meta)
        shutil.rmtree(eval_dir / CHUNKS_DIR, ignore_errors=True)
    return load_records(eval_dir)


def _classes(chunk_files: Sequence[dict[str, np.ndarray]]) -> int:
    for c in chunk_files:
        if f"{REFERENCE}.top5_classes" in c:
            return int(c[f"{REFERENCE}.top5_classes"].shape[1])
    return 5
