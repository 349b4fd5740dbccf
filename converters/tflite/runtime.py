"""Running a .tflite in the LiteRT interpreter: NCHW float32 batch in, float32 logits out.

Generic on purpose: follows the embedded (or inferred) input layout, loops over a fixed batch,
and (de)quantizes integer I/O with the tensors' own scale/zero point, so full-integer targets
reuse it unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.batches import run_chunked
from mnv4_deploy.errors import DeployError, UsageError
from mnv4_deploy.registry import Converter, Runner

from .common import NUM_THREADS, tool_versions
from .metadata import op_histogram, read_embedded_contract, read_metadata


def open_interpreter(path: Path) -> Any:
    """The LiteRT interpreter on `path`, tensors allocated; a custom op it has no kernel for is a
    one-line UsageError (a vendor-compiled model, e.g. Vela's `_vela.tflite`, runs only on its device)."""
    import re

    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=NUM_THREADS)
        interpreter.allocate_tensors()
    except RuntimeError as exc:
        custom = re.search(r"unresolved custom op: ([\w.-]+?)\.?(?:\s|$)", str(exc))
        if custom is None:
            raise
        raise UsageError(f"{Path(path).name} uses the custom op {custom[1]!r}, which the LiteRT interpreter here "
                         "has no kernel for: a model compiled for an accelerator runs only on that device",
                         "validate or inspect the TFLite it was compiled from") from None
    return interpreter


class TfliteArtifacts(Converter):
    """What every TFLite target does with its artifact: run it in LiteRT here, describe it."""

    def runner(self, artifact: Any) -> Runner:
        return litert_runner(Path(artifact.path))

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_tflite(Path(path))


def _tensor_facts(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    facts = {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
             "dtype": np.dtype(detail["dtype"]).name}
    if scale:
        facts["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return facts


def describe_tflite(path: Path) -> dict[str, Any]:
    """What is inside a .tflite file: I/O, op histogram, metadata names, the embedded contract."""
    interpreter = open_interpreter(path)
    return {"format": "tflite", "inputs": [_tensor_facts(d) for d in interpreter.get_input_details()],
            "outputs": [_tensor_facts(d) for d in interpreter.get_output_details()],
            "op_histogram": op_histogram(path), "metadata": sorted(read_metadata(path)),
            "embedded_contract": read_embedded_contract(path)}


def _input_layout(path: Path, shape: list[int]) -> str:
    embedded = read_embedded_contract(path)
    if embedded and embedded.get("input_layout") in ("NHWC", "NCHW"):
        return embedded["input_layout"]
    # A foreign file: channels last when the last axis is 3 and the second is not.
    return "NHWC" if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3 else "NCHW"


def _to_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        scale, zero_point = detail["quantization"]
        if not scale:
            raise DeployError(f"input {detail['name']} is {dtype.name} without a quantization scale")
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _from_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind in "iu":
        scale, zero_point = detail["quantization"]
        return ((y.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    return y.astype(np.float32)


def litert_runner(path: Path) -> Runner:
    """The LiteRT interpreter (XNNPACK, 2 threads): NCHW float32 batch -> float32 logits."""
    import ai_edge_litert

    interpreter = open_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = [int(d) for d in inp["shape"]]
    layout = _input_layout(path, shape)
    dynamic = int(inp.get("shape_signature", inp["shape"])[0]) == -1
    fixed = max(shape[0], 1)

    def invoke(chunk: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], _to_input(chunk, inp))
        interpreter.invoke()
        return _from_output(interpreter.get_tensor(out["index"]), out).copy()

    def invoke_padded(chunk: np.ndarray) -> np.ndarray:
        """A fixed batch > 1 takes a short last chunk padded with zeros; the padding's rows are dropped."""
        short = fixed - chunk.shape[0]
        if short:
            chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), np.float32)])
        return invoke(chunk)[:fixed - short]

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        batch = np.ascontiguousarray(batch)
        if dynamic and batch.shape[0] != interpreter.get_input_details()[0]["shape"][0]:
            interpreter.resize_tensor_input(inp["index"], list(batch.shape))
            interpreter.allocate_tensors()
        return invoke(batch) if dynamic else run_chunked(invoke_padded, batch, fixed)

    runtime = (f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '') or tool_versions()['ai-edge-litert']} "
               f"interpreter (XNNPACK, {NUM_THREADS} threads, {layout} input)")
    return Runner(run=run, runtime=runtime)
