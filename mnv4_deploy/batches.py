"""Running a model over images: one home for chunking and the PyTorch runners.

Every model this project judges is a `Run`: an NCHW float32 batch in, logits (N, classes) out.
The pipeline (reference logits), the plan stage (its emulation and the fallback's drop), the
evaluation pass and the converters (emulations, BPU forecasts) all build and call runs through
this module, so chunk size and torch settings are chosen once. Light on purpose: torch is
imported inside the runners, and nothing here imports the pipeline or the plan.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

Run = Callable[[np.ndarray], np.ndarray]
CHUNK = 32  # images per call when many images are run: bounds memory, not the result


def run_chunked(run: Run, tensors: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Run a model over many images in bounded-memory chunks (row i of the result is image i)."""
    return np.concatenate([run(tensors[i:i + chunk]) for i in range(0, len(tensors), chunk)])


def torch_runner(model: Any, one_thread: bool = False) -> Run:
    """`model` (a torch module in eval mode) as a Run, without autograd.

    `one_thread` runs each call on one intra-op thread: results then do not depend on the
    host's core count (the evaluation pass's reference: shards may run on different machines),
    and a 2-thread pool on a busy 2-core host was 3x slower than one thread (conv_small 224 px:
    409 vs 142 ms/image at load average 20).
    """
    import torch

    from .quant.threads import single_thread

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if not one_thread:
                return model(x).numpy()
            with single_thread():
                return model(x).numpy()

    return run


def torch_logits(model: Any, tensors: np.ndarray) -> np.ndarray:
    """A torch model's logits on many images, chunk by chunk."""
    return run_chunked(torch_runner(model), tensors)
