"""Running and describing a .pte in `executorch.runtime` (the Python bindings of the C++ runtime).

The program's input has a fixed batch (1), so the runner feeds one sample at a time. XNNPACK
runs on ExecuTorch's thread pool (one thread per core by default; `set_threads` sizes it).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mnv4_deploy.batches import run_chunked
from mnv4_deploy.errors import UsageError
from mnv4_deploy.provenance import package_version
from mnv4_deploy.registry import Runner

from .lower import METADATA_METHOD


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


@contextlib.contextmanager
def _native_log() -> Iterator[list[str]]:
    """Capture what the C++ runtime logs while loading (Python-level and fd 2) instead of printing it."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.redirect_stderr(io.StringIO()) as text:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [ln.strip() for ln in sink.read().decode(errors="replace").splitlines() + text.getvalue().splitlines()
                      if ln.strip()]


def check_pte_header(path: Path) -> None:
    """Refuse, before the runtime sees it, a file whose header is not a .pte's.

    The runtime logs a bad file identifier together with the raw bytes; the Python bindings
    then fail to decode that log line and the process aborts (SIGABRT, exit 134) instead of
    raising. A .pte starts with the flatbuffer root offset, the identifier `ET` + two digits and,
    when present, the `eh00` extended header (its length, program size, segment offset).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(32)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise UsageError(f"{path}: not an ExecuTorch program (no ET flatbuffer identifier in its header)",
                         "pass the .pte written by an executorch target")
    if int.from_bytes(head[0:4], "little") >= size:
        raise UsageError(f"{path}: not a readable ExecuTorch program (root offset past the end: truncated?)",
                         "check the file is complete; re-export it")
    if head[8:12] == b"eh00":
        if len(head) < 32:
            raise UsageError(f"{path}: not a readable ExecuTorch program (extended header cut short)",
                             "check the file is complete; re-export it")
        program_size = int.from_bytes(head[16:24], "little")
        segment_base = int.from_bytes(head[24:32], "little")
        if program_size > size or segment_base > size:
            raise UsageError(f"{path}: not a readable ExecuTorch program (its header declares "
                             f"{max(program_size, segment_base)} bytes, the file has {size}: truncated?)",
                             "check the file is complete; re-export it")


def load_program(path: Path) -> Any:
    """The loaded program, or one line naming the file (and the runtime's reason) when it is not a readable .pte."""
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: not a file", "pass the .pte written by an executorch target")
    check_pte_header(path)
    try:
        with _native_log() as log:
            program = Runtime.get().load_program(path)
            if "forward" not in program.method_names:
                raise ValueError("no forward method")
    except Exception as exc:
        reason = next((ln.split("] ", 1)[-1] for ln in log if "program.cpp" in ln or "Error" in ln), type(exc).__name__)
        raise UsageError(f"{path}: not a readable ExecuTorch program ({reason[:160]})",
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

    def execute(chunk: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(chunk.copy())])[0].detach().numpy().astype(np.float32).copy()

    def run(batch: np.ndarray) -> np.ndarray:
        return run_chunked(execute, np.ascontiguousarray(batch, dtype=np.float32), batch_size)

    return Runner(run=run,
                  runtime=f"executorch {package_version('executorch')} runtime (XNNPACK delegate, portable kernels)")
