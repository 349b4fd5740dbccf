"""Reading a .tflite flatbuffer into subgraph 0's operators, with the generated schema bindings
only (no interpreter). TFLite knowledge: the full-integer check (full_integer.float_ops) and the
EdgeTPU check and compiler runner all start from it, so it lives here and imports no other target."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mnv4_deploy.errors import BackendMissing, DeployError, UsageError


class FlatbufferError(DeployError):
    """Base of what the reader raises; a checker built on it may subclass these to add its own family."""


class NotAFlatbufferError(FlatbufferError, UsageError):
    """The file is missing, or is not a TFLite flatbuffer (exit 2: the user passed a bad file)."""


class TfliteSchemaMissing(FlatbufferError, BackendMissing):
    """Neither ai-edge-litert nor tensorflow is installed, so the flatbuffer cannot be read (exit 5)."""


TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite file


@functools.lru_cache(maxsize=1)
def _schema() -> Any:
    """Generated flatbuffer bindings: LiteRT's copy (imports in ~0.3 s), else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError as exc:
            raise TfliteSchemaMissing(
                "cannot read .tflite files: neither ai-edge-litert nor tensorflow is installed",
                hint="install mnv4-deploy[tflite]",
            ) from exc
    return schema


@functools.lru_cache(maxsize=None)
def _enum_names(enum_name: str) -> dict[int, str]:
    """Value -> name for one of the schema's enum classes (TensorType, BuiltinOperator, ...)."""
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the checks need it; `raw` holds a constant's bytes for `values()`."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    signature: tuple[int, ...]  # shape with -1 where a dimension is dynamic
    is_constant: bool
    raw: bytes | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.signature))}]"

    def values(self) -> Any:
        """A constant's contents as a numpy array (axes, paddings, strides), else None."""
        if self.raw is None:
            return None
        import numpy as np

        np_dtype = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64,
                    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT16": np.int16}.get(self.dtype)
        if np_dtype is None:
            return None
        return np.frombuffer(self.raw, dtype=np_dtype).reshape(self.shape)


@dataclass(frozen=True)
class OpInfo:
    """One operator of subgraph 0, in execution order."""

    index: int
    op: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    options: dict[str, Any]

    def input(self, position: int) -> TensorInfo | None:
        return self.inputs[position] if position < len(self.inputs) else None


@dataclass(frozen=True)
class TfliteGraph:
    """Subgraph 0 of a model, plus what the checks need from the rest of the file."""

    path: str
    ops: tuple[OpInfo, ...]
    input_indices: frozenset[int]
    output_indices: frozenset[int]
    n_subgraphs: int


def read_tflite(path: str | Path) -> TfliteGraph:
    """Parse a .tflite file into subgraph 0's operators; NotAFlatbufferError for anything else."""
    path = Path(path)
    buf = read_flatbuffer_bytes(path)
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
        subgraph = model.subgraphs[0]
        tensors = [_tensor_info(i, t, model, buf) for i, t in enumerate(subgraph.tensors or [])]
        ops = tuple(_op_info(i, op, model, tensors) for i, op in enumerate(subgraph.operators or []))
    except NotAFlatbufferError:
        raise
    except Exception as exc:  # a corrupt flatbuffer fails with struct/index/type errors
        raise NotAFlatbufferError(
            f"{path}: has the TFLite identifier but cannot be parsed ({type(exc).__name__}); "
            "expected a valid .tflite flatbuffer"
        ) from exc
    return TfliteGraph(
        path=str(path),
        ops=ops,
        input_indices=frozenset(int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])),
        output_indices=frozenset(int(i) for i in (subgraph.outputs if subgraph.outputs is not None else [])),
        n_subgraphs=len(model.subgraphs),
    )


def read_flatbuffer_bytes(path: Path) -> bytes:
    """The file's bytes, refused with one line unless it carries the TFL3 identifier."""
    if not path.is_file():
        raise NotAFlatbufferError(f"{path}: no such file; expected a .tflite flatbuffer")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise NotAFlatbufferError(
            f"{path}: not a TFLite flatbuffer (expected the 'TFL3' identifier at bytes 4-8)"
        )
    return buf


def _tensor_info(index: int, t: Any, model: Any, buf: bytes) -> TensorInfo:
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
    raw = _buffer_bytes(model.buffers[t.buffer], buf) if t.buffer and t.buffer < len(model.buffers) else None
    name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
    return TensorInfo(index, name, _enum_names("TensorType").get(t.type, f"TYPE_{t.type}"),
                      shape, signature, raw is not None, raw)


def _buffer_bytes(buffer: Any, buf: bytes) -> bytes | None:
    """A buffer's payload: inline data, or (models over 2 GB) an offset/size into the file."""
    if buffer.data is not None and len(buffer.data):
        return bytes(buffer.data)
    if buffer.offset and buffer.offset > 1 and buffer.size:
        return buf[buffer.offset: buffer.offset + buffer.size]
    return None


def _op_info(index: int, op: Any, model: Any, tensors: Sequence[TensorInfo]) -> OpInfo:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)  # schema v3a: small codes in both
    name = _enum_names("BuiltinOperator").get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
        name = f"CUSTOM:{custom}"
    ins = tuple(tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0)
    outs = tuple(tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0)
    return OpInfo(index, name, ins, outs, _options(name, op.builtinOptions, ins))


# Flatbuffer option attributes worth reporting: attribute -> (report key, enum for its names).
_SCALAR_OPTIONS: dict[str, tuple[str, str | None]] = {
    "fusedActivationFunction": ("fused_activation", "ActivationFunctionType"),
    "padding": ("padding", "Padding"),
    "depthMultiplier": ("depth_multiplier", None),
    "weightsFormat": ("weights_format", "FullyConnectedOptionsWeightsFormat"),
    "keepNumDims": ("keep_num_dims", None),
    "keepDims": ("keep_dims", None),
    "axis": ("axis", None),
    "beta": ("beta", None),
    "ellipsisMask": ("ellipsis_mask", None),
    "newAxisMask": ("new_axis_mask", None),
    "shrinkAxisMask": ("shrink_axis_mask", None),
    "adjX": ("adj_x", None),
    "adjY": ("adj_y", None),
}
_PAIR_OPTIONS: dict[str, tuple[str, str]] = {  # report key -> (h attribute, w attribute)
    "stride": ("strideH", "strideW"),
    "dilation": ("dilationHFactor", "dilationWFactor"),
    "filter": ("filterHeight", "filterWidth"),
}
# Where a conv-like op keeps its weights (OHWI for CONV_2D/TRANSPOSE_CONV, 1HWC for depthwise).
_WEIGHTS_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "TRANSPOSE_CONV": 1}


def _options(op_name: str, opts: Any, inputs: Sequence[TensorInfo]) -> dict[str, Any]:
    """The options that decide where an op can run (e.g. on the EdgeTPU), as plain JSON-able values."""
    out: dict[str, Any] = {}
    for attr, (key, enum) in _SCALAR_OPTIONS.items():
        if opts is not None and hasattr(opts, attr):
            value = getattr(opts, attr)
            out[key] = _enum_names(enum).get(value, value) if enum else _plain(value)
    for key, (h_attr, w_attr) in _PAIR_OPTIONS.items():
        if opts is not None and hasattr(opts, h_attr):
            out[key] = (int(getattr(opts, h_attr)), int(getattr(opts, w_attr)))
    weights_at = _WEIGHTS_INPUT.get(op_name)
    if weights_at is not None and len(inputs) > weights_at and len(inputs[weights_at].shape) == 4:
        weights = inputs[weights_at].shape
        out["filter"] = (weights[1], weights[2])
        if op_name == "CONV_2D":
            in_channels, filter_channels = inputs[0].shape[-1], weights[3]
            out["groups"] = in_channels // filter_channels if filter_channels else 1
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
