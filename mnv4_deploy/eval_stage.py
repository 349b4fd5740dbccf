"""The labeled-set stage of a run: found before conversion, evaluated in one pass after it.

Targets are converted and judged for parity first; each keeps its runner. Then the labeled set
streams once through the reference and every runner (`evaluation.run_evaluation`), and each
target's accuracy and `--max-drop` gate come from the per-image records.

A few things need labeled images in memory during conversion (the int8 plan's accuracy-aware
fallback, the BPU bundle's int8 forecast): they get the first `HELD_IMAGES` images of the
sampled list, the same in every shard, so sharded runs build the same artifacts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import data as datasets
from .batches import torch_runner
from .errors import UsageError
from .evaluation import (EVAL_CHUNK, EVAL_DIR, META, REFERENCE, EvalRecords, EvalSpec, ShardSpec, run_evaluation,
                         shard_chunk_ids)
from .preprocess import Preprocess
from .streaming import DEFAULT_WORKERS, check_workers

HELD_IMAGES = 1000  # labeled images held in memory for conversion-time checks (fallback, BPU forecast)

Run = Callable[[np.ndarray], np.ndarray]
Log = Callable[[str], None]
REFERENCE_RUNNER = "one intra-op thread, channels_last weights"


def reference_model(model: Any) -> Any:
    """A channels-last copy of the reference for the pass (the run's own model is left as it is).

    PyTorch's CPU convolutions reorder NCHW tensors around every depthwise layer; with
    channels-last weights they do not. conv_small 224 px, batch 32, one thread: 7.5 -> 3.2 ms per
    image on an idle 2-core host; logits move by at most 9e-6 (top-5 unchanged on 256 images).
    """
    import copy

    import torch

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def model_sha256(model: Any) -> str:
    """Every parameter and buffer (name, dtype, shape, bytes): what the reference's records depend on."""
    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def reference_records_dir(path: str | Path, resume: bool) -> Path:
    """`--eval-reference-from`: an earlier run's `eval/` folder, given as its --out or as the folder itself."""
    if resume:
        raise UsageError("--eval-reference-from with --resume: a resumed run continues its own records",
                         "drop --eval-reference-from, or start a fresh run without --resume")
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"--eval-reference-from {path}: not a directory",
                         "pass the --out of an earlier run with --eval-data (or its eval/ folder)")
    for folder in (path / EVAL_DIR, path):
        if _finished_records(folder):
            return folder
    raise UsageError(f"--eval-reference-from {path}: no finished evaluation records ({EVAL_DIR}/{META} and "
                     f"{REFERENCE}.npz)", "pass the --out of an earlier run with --eval-data that finished")


def _finished_records(folder: Path) -> bool:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and bool(meta.get("complete")) and (folder / f"{REFERENCE}.npz").is_file()


@dataclass(frozen=True)
class EvalRequest:
    """The labeled set found and sampled before the model loads, and how to evaluate it.

    Everything here is checked without the model, so a bad folder, shard spec or reference
    folder fails before any model is built or image decoded; `EvalStage.open` adds the model.
    """

    labeled: datasets.LabeledSet
    shard: ShardSpec | None = None
    workers: int = DEFAULT_WORKERS
    resume: bool = False
    reference_from: Path | None = None

    @classmethod
    def find(cls, eval_data: str | Path, *, count: int | None, seed: int, shard: str | ShardSpec | None = None,
             workers: int = DEFAULT_WORKERS, resume: bool = False,
             reference_from: str | Path | None = None) -> "EvalRequest":
        """Find and sample the labeled set (no decoding); bad layouts, shard specs and folders fail here."""
        spec = ShardSpec.parse(shard) if isinstance(shard, str) else shard
        workers = check_workers(workers)
        reference = reference_records_dir(reference_from, resume) if reference_from is not None else None
        labeled = datasets.labeled_files(eval_data, count, seed)
        shard_chunk_ids(len(labeled), EVAL_CHUNK, spec)  # more shards than chunks: refused before any work
        return cls(labeled, spec, workers, resume, reference)


@dataclass
class EvalStage:
    """One run's labeled set, its shard, and the runners that will see it."""

    labeled: datasets.LabeledSet
    contract: Preprocess
    shard: ShardSpec | None = None
    workers: int = DEFAULT_WORKERS
    resume: bool = False
    runners: dict[str, Run] = field(default_factory=dict)
    records: EvalRecords | None = None
    reference_from: Path | None = None  # an earlier run's eval/ folder whose reference records may be reused

    @classmethod
    def open(cls, request: EvalRequest, contract: Preprocess, num_classes: int) -> "EvalStage":
        """The found set for the loaded model: only the label range is checked here, nothing is scanned again."""
        request.labeled.check_classes(num_classes)
        return cls(request.labeled, contract, request.shard, request.workers, request.resume,
                   reference_from=request.reference_from)

    def held_batch(self, log: Log) -> datasets.ImageBatch:
        """The first HELD_IMAGES labeled images, decoded into memory."""
        held = self.labeled.subset(range(min(HELD_IMAGES, len(self.labeled))))
        return datasets.load_images(list(held.files), self.contract, held.root, "--eval-data", log,
                                    labels=list(held.labels))

    def identity(self, prepared: Any, recipe: Any, artifacts: Mapping[str, str]) -> dict[str, Any]:
        """What records of this run must share with a resumed run, or with the other shards."""
        info = prepared.model_info
        recipe_dict = {"name": recipe.name, **recipe.to_dict()}
        return {"model": info.get("name"), "weights": info.get("weights"),
                "weights_sha256": info.get("weights_sha256"),
                "recipe": hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, default=str).encode()).hexdigest(),
                "contract": self.contract.sha256(), "targets": sorted(artifacts), "artifacts": dict(sorted(artifacts.items())),
                "eval_set": self.labeled.listing_sha256(self.contract), "eval_layout": self.labeled.layout}

    def reference_key(self, reference: Any, identity: Mapping[str, Any]) -> dict[str, Any]:
        """What the reference's records depend on: another run sharing it reuses them (`evaluation`)."""
        import torch

        return {"model_sha256": model_sha256(reference), "recipe": identity["recipe"], "contract": identity["contract"],
                "eval_set": identity["eval_set"], "eval_layout": identity["eval_layout"],
                "reference_runner": f"torch {torch.__version__}, {REFERENCE_RUNNER}"}

    def run(self, reference: Any, prepared: Any, recipe: Any, artifacts: Mapping[str, str], out_dir: Path,
            log: Log) -> EvalRecords:
        """Stream the set once through the reference and every registered runner."""
        identity = self.identity(prepared, recipe, artifacts)
        spec = EvalSpec(self.labeled, self.contract, identity, self.shard,
                        reference_key=self.reference_key(reference, identity))
        chunks = spec.chunk_ids()
        shard = f" (shard {self.shard}: chunks {chunks[0]}-{chunks[-1]} of {spec.total_chunks()})" if self.shard else ""
        log(f"evaluation: {len(self.labeled)} labeled images ({self.labeled.layout}) from {self.labeled.root}{shard}, "
            f"one pass for reference + {len(self.runners)} target(s), {self.workers} decode worker(s)")
        # one thread: shards may run on machines with other core counts (see batches.torch_runner)
        run_reference = torch_runner(reference_model(reference), one_thread=True)
        self.records = run_evaluation(spec, run_reference, self.runners, out_dir, workers=self.workers,
                                      resume=self.resume, log=log, reference_from=self.reference_from)
        return self.records
