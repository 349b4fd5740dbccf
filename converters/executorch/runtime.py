"""Running and describing a .pte in `executorch.runtime` (the Python bindings of the C++ runtime).

The program's input has a fixed batch (1), so the runner feeds one sample at a time. XNNPACK
runs on ExecuTorch's thread pool (one thread per core by default; `set_threads` sizes it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import Runner

from .lower import METADATA_METHOD


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")


def set_threads(count: int) -> bool:
    """Resize ExecuTorch's thread pool (XNNPACK uses it); False where the bindings cannot."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return False
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is None:
        return False
    reset(int(count))
    return True


def load_program(path: Path) -> Any:
    """The loaded program, or one line naming the file when it is not a readable .pte."""
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: not a file", "pass the .pte written by an executorch target")
    try:
        program = Runtime.get().load_program(path)
        if "forward" not in program.method_names:
            raise ValueError("no forward method")
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: not a readable ExecuTorch program ({type(exc).__name__})",
                         "check the file is complete; re-export it") from None
    return program


def _tensor_meta(info: Any, name: str) -> dict[str, Any]:
    dtype = str(getattr(info, "dtype", "")).split(".")[-1].lower()
    return {"name": name, "shape": [int(d) for d in info.sizes()], "dtype": dtype}


def read_metadata(program: Any) -> dict[str, Any]:
    """The JSON the exporter stored as a constant method ({} for a .pte from elsewhere)."""
    if METADATA_METHOD not in program.method_names:
        return {}
    try:
        return json.loads(program.load_method(METADATA_METHOD).execute([])[0])
    except Exception:
        return {}


def describe_pte(path: Path) -> dict[str, Any]:
    """What is inside a .pte: methods, I/O shapes and dtypes, the embedded metadata."""
    program = load_program(path)
    meta = program.metadata("forward")
    inputs = [_tensor_meta(meta.input_tensor_meta(i), f"input_{i}") for i in range(meta.num_inputs())]
    outputs = [_tensor_meta(meta.output_tensor_meta(i), f"output_{i}") for i in range(meta.num_outputs())]
    return {"format": "executorch", "methods": sorted(program.method_names), "inputs": inputs, "outputs": outputs,
            "metadata": read_metadata(program), "bytes": Path(path).stat().st_size}


def pte_runner(path: Path) -> Runner:
    """executorch.runtime: NCHW float32 batch -> float32 logits, one sample per call."""
    import torch

    program = load_program(path)
    method = program.load_method("forward")
    batch_size = int(program.metadata("forward").input_tensor_meta(0).sizes()[0])

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = []
        for start in range(0, batch.shape[0], batch_size):
            chunk = torch.from_numpy(batch[start:start + batch_size].copy())
            outputs.append(method.execute([chunk])[0].detach().numpy().astype(np.float32).copy())
        return np.concatenate(outputs)

    return Runner(run=run, runtime=f"executorch {_version()} runtime (XNNPACK delegate, portable kernels)")
