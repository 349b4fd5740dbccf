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
from .evaluation import EvalRecords, EvalSpec, ShardSpec, run_evaluation
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

    @classmethod
    def open(cls, eval_data: str | Path, contract: Preprocess, *, count: int | None, seed: int,
             num_classes: int | None, shard: str | ShardSpec | None = None, workers: int = DEFAULT_WORKERS,
             resume: bool = False) -> "EvalStage":
        """Find and sample the labeled set (no decoding yet); bad layouts and shard specs fail here."""
        spec = ShardSpec.parse(shard) if isinstance(shard, str) else shard
        labeled = datasets.labeled_files(eval_data, count, seed, num_classes)
        EvalSpec(labeled, contract, {}, spec).chunk_ids()  # more shards than chunks: refused before any work
        return cls(labeled, contract, spec, check_workers(workers), resume)

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
                                      resume=self.resume, log=log)
        return self.records
