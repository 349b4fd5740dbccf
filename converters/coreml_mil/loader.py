"""Read a saved .mlpackage into a flat list of nodes, using only coremltools' own readers.

Order of checks, so that each failure gets a one-line reason: package layout and manifest,
model spec (must be an ML Program), weight blobs (every blob the program references must
lie inside its file), op support (before any value is loaded), then the pymil program
(`coremltools.converters.mil.frontend.milproto.load`, which resolves weights).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional, Union

import numpy as np

from .errors import CorruptModelError, MilExecutorError, UnsupportedOpError

_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_METADATA = struct.Struct("<IIQQ")  # sentinel, mil dtype, size in bytes, data offset

InputRef = Union[str, tuple[str, ...]]


@dataclass(frozen=True)
class Node:
    """One non-const op: what it reads (var names) and what it writes, with the program's dtypes."""

    op_type: str
    name: str
    inputs: dict[str, InputRef]
    outputs: tuple[str, ...]
    out_dtypes: tuple[np.dtype, ...]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Optional[int], ...]  # None where the dimension is flexible
    dtype: np.dtype


@dataclass
class LoadedProgram:
    inputs: list[TensorSpec]
    outputs: list[str]
    consts: dict[str, Any]
    nodes: list[Node]


def import_coremltools() -> Optional[ModuleType]:
    """Import coremltools, or return None when it is not installed.

    coremltools imports TensorFlow when present, and here TensorFlow loaded before
    triton (which torch pulls in lazily) segfaults the process. We read packages only,
    so TensorFlow is hidden from coremltools' import unless the process already has it.
    """
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    if importlib.util.find_spec("coremltools") is None:
        return None
    hide_tf = "tensorflow" not in sys.modules
    if hide_tf:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` fail
    # off macOS coremltools logs one warning per missing native proxy on import; they say only
    # that prediction needs macOS, which our runner states once in the report
    quiet = logging.getLogger("coremltools")
    level = quiet.level
    if sys.platform != "darwin":
        quiet.setLevel(logging.ERROR)
    try:
        import coremltools
        from coremltools.converters.mil.frontend.milproto import load as _  # noqa: F401
    finally:
        quiet.setLevel(level)
        if hide_tf and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return coremltools


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---------------------------------------------------------------- package and spec
def _check_layout(path: Path) -> None:
    if not path.exists():
        raise CorruptModelError(f"{path} does not exist")
    if not path.is_dir():
        raise CorruptModelError(f"{path} is a file, not an .mlpackage folder")
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise CorruptModelError(f"{path} is not an .mlpackage: Manifest.json is missing")
    try:
        data = json.loads(manifest.read_text())
        items = [str(item["path"]) for item in data["itemInfoEntries"].values()]
        data["itemInfoEntries"][data["rootModelIdentifier"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptModelError(f"{manifest} is not a valid package manifest ({_one_line(exc)})") from None
    for item in items:
        if not (path / "Data" / item).exists():
            raise CorruptModelError(f"{path}: Data/{item}, listed in Manifest.json, is missing")


def _read_spec(ct: ModuleType, path: Path) -> tuple[Any, Optional[str]]:
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
    except Exception as exc:  # coremltools raises many types for a bad package
        raise CorruptModelError(f"cannot read the model spec in {path} ({_one_line(exc)})") from None
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise CorruptModelError(f"{path} holds a {kind} model, not an ML Program")
    return spec, model.weights_dir


def _main_function(spec: Any) -> tuple[str, Any]:
    functions = spec.mlProgram.functions
    name = spec.description.defaultFunctionName or "main"
    if name not in functions:
        if len(functions) != 1:
            raise CorruptModelError(f"the ML Program has no function {name!r}")
        name = next(iter(functions))
    return name, functions[name]


def _proto_ops(function: Any) -> Iterator[Any]:
    block = function.block_specializations.get(function.opset)
    if block is None:
        raise CorruptModelError(f"the ML Program has no block for opset {function.opset!r}")
    yield from block.operations


def _proto_op_name(op: Any) -> str:
    try:
        return str(op.attributes["name"].immediateValue.tensor.strings.values[0])
    except (KeyError, IndexError):
        return op.outputs[0].name if op.outputs else "?"


def _check_ops_supported(function: Any, supported: set[str]) -> None:
    for op in _proto_ops(function):
        if op.type != "const" and op.type not in supported:
            raise UnsupportedOpError(op.type, _proto_op_name(op))


# ---------------------------------------------------------------- weights
def _blob_refs(function: Any) -> Iterator[tuple[str, int]]:
    for op in _proto_ops(function):
        values = list(op.attributes.values())
        values += [b.value for arg in op.inputs.values() for b in arg.arguments if b.WhichOneof("binding") == "value"]
        for value in values:
            if value.WhichOneof("value") == "blobFileValue":
                yield value.blobFileValue.fileName, value.blobFileValue.offset


def _check_weight_blobs(function: Any, weights_dir: Optional[str]) -> None:
    """Every referenced blob must have its metadata sentinel and its bytes inside the file."""
    sizes: dict[str, int] = {}
    for file_name, offset in _blob_refs(function):
        base = file_name.split("/")[-1]
        if weights_dir is None:
            raise CorruptModelError(f"the program references weights file {base} but the package has no weights folder")
        path = os.path.join(weights_dir, base)
        if path not in sizes:
            if not os.path.isfile(path):
                raise CorruptModelError(f"weights file {path} is missing")
            sizes[path] = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.seek(offset)
            head = handle.read(_BLOB_METADATA.size)
        if len(head) < _BLOB_METADATA.size:
            raise CorruptModelError(
                f"weights file {base} is truncated: blob metadata at byte {offset} lies past its end "
                f"({sizes[path]} bytes)")
        sentinel, _, size, data_offset = _BLOB_METADATA.unpack(head)
        if sentinel != _BLOB_SENTINEL:
            raise CorruptModelError(f"weights file {base} is corrupt: no blob header at byte {offset}")
        if data_offset + size > sizes[path]:
            raise CorruptModelError(
                f"weights file {base} is truncated: a blob needs bytes up to {data_offset + size}, "
                f"the file has {sizes[path]}")


# ---------------------------------------------------------------- pymil program -> nodes
def _np_dtype(types: ModuleType, var: Any) -> np.dtype:
    return np.dtype(types.nptype_from_builtin(var.dtype))


def _to_nodes(func: Any, types: ModuleType) -> LoadedProgram:
    produced = set(func.inputs)
    consts: dict[str, Any] = {}
    nodes: list[Node] = []

    def ref(var: Any) -> str:
        if var.name not in produced and var.name not in consts:
            if var.val is None:
                raise CorruptModelError(f"var {var.name!r} is used before it is defined")
            consts[var.name] = var.val
        return var.name

    for op in func.operations:
        if op.op_type == "const":
            consts[op.outputs[0].name] = op.outputs[0].val
            continue
        inputs: dict[str, InputRef] = {}
        for param, value in op.inputs.items():
            inputs[param] = tuple(ref(v) for v in value) if isinstance(value, (list, tuple)) else ref(value)
        outs = tuple(v.name for v in op.outputs)
        produced.update(outs)
        nodes.append(Node(op.op_type, op.name, inputs, outs, tuple(_np_dtype(types, v) for v in op.outputs)))

    specs = []
    for name, var in func.inputs.items():
        shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in var.shape)
        specs.append(TensorSpec(name, shape, _np_dtype(types, var)))
    return LoadedProgram(specs, [v.name for v in func.outputs], consts, nodes)


def load_program(path: Union[str, os.PathLike], supported: set[str]) -> LoadedProgram:
    """Validate the package at `path` and return its main function as nodes plus constants."""
    path = Path(path)
    _check_layout(path)
    ct = import_coremltools()
    if ct is None:
        raise MilExecutorError("reading an .mlpackage needs coremltools (pip install coremltools)")
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil import types

    spec, weights_dir = _read_spec(ct, path)
    func_name, function = _main_function(spec)
    _check_weight_blobs(function, weights_dir)
    _check_ops_supported(function, supported)
    try:
        program = milproto.load(spec, spec.specificationVersion, weights_dir or "")
        func = program.functions[func_name]
    except Exception as exc:  # the proto reader raises many types for malformed content
        raise CorruptModelError(f"cannot load the ML Program in {path} ({_one_line(exc)})") from None
    return _to_nodes(func, types)
