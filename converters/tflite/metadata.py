"""The preprocessing contract inside the .tflite flatbuffer's metadata list, and op counts.

Only `ai_edge_litert`'s flatbuffer schema is needed, so an app-side script (or `inspect`) can
read the contract without litert-torch or TensorFlow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mnv4_deploy.errors import UsageError

from .common import METADATA_NAME, METADATA_SCHEMA


def contract_payload(contract: Any, layout: str, input_shape: list[int], extra: dict[str, Any] | None = None) -> dict:
    """What an app needs to feed the model: the contract, the tensor layout and shape."""
    pixel_mean, pixel_scale = contract.pixel_mean_and_scale()
    return {"schema": METADATA_SCHEMA, "preprocess": contract.to_dict(), "input_layout": layout.upper(),
            "input_shape": [int(d) for d in input_shape], "pixel_mean": pixel_mean, "pixel_scale": pixel_scale,
            "note": "preprocess.layout is the PyTorch model's; feed the tensor in input_layout",
            **(extra or {})}


def embed_metadata(path: Path, payload: dict[str, Any], name: str = METADATA_NAME) -> None:
    """Add (or replace) a JSON entry in the model's metadata list, in place.

    The file keeps its form: weights inline stay inline (classic TFLite, any runtime), weights
    stored after the flatbuffer (what ai-edge-quantizer writes past 256 KiB) stay there, 16-byte
    aligned. The metadata buffer itself is always inline, where every flatbuffer reader finds it.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    raw = path.read_bytes()
    packed = schema.Model.GetRootAs(raw, 0)
    external = any(packed.Buffers(i).Offset() > 1 for i in range(packed.BuffersLength()))
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(raw))
    data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if _decode(m.name) == name]
    if existing:  # re-embedding (e.g. a rewrite of an artifact that had one): reuse its buffer
        model.buffers[existing[0].buffer].data = data
    else:
        buffer = schema.BufferT()
        buffer.data = data
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    inline = {m.buffer for m in model.metadata}
    path.write_bytes(_serialize(model, external, inline))


def load_model_object(path: Path) -> tuple[Any, bool]:
    """The mutable ModelT of a .tflite file, and whether its weights sit after the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    raw = path.read_bytes()
    packed = schema.Model.GetRootAs(raw, 0)
    external = any(packed.Buffers(i).Offset() > 1 for i in range(packed.BuffersLength()))
    return flatbuffer_utils.read_model_from_bytearray(bytearray(raw)), external


def save_model_object(path: Path, model: Any, external: bool) -> None:
    """Write a ModelT back in the form it was read (metadata buffers always inline)."""
    path.write_bytes(_serialize(model, external, {m.buffer for m in (model.metadata or [])}))


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _serialize(model: Any, external: bool, keep_inline: set[int]) -> bytes:
    """Pack a ModelT; with `external`, buffers of 1 KiB or more go after it, 16-byte aligned."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    for buffer in model.buffers:  # numpy data packs in one copy; bytes-like data packs byte by byte
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), dtype=np.uint8)
    if not external:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    moved = {i: b.data.reshape(-1).view(np.uint8) for i, b in enumerate(model.buffers)
             if i not in keep_inline and b.data is not None and b.data.nbytes >= 1024}
    for i in moved:  # non-zero placeholders keep the offset/size fields in the packed table
        model.buffers[i].data, model.buffers[i].offset, model.buffers[i].size = None, 1, 1
    out = bytearray(flatbuffer_utils.convert_object_to_bytearray(model))
    places, end = [], _round16(len(out))
    for i, data in moved.items():
        places.append((i, end, data))
        end = _round16(end + data.nbytes)
    out.extend(bytes(end - len(out)))
    root = schema.Model.GetRootAs(out, 0)
    for i, start, data in places:
        flatbuffer_utils.update_packed_buffer(root.Buffers(i), offset=start, size=data.nbytes)
        out[start:start + data.nbytes] = data.tobytes()
    return bytes(out)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(path: str | Path) -> dict[str, bytes]:
    """Every metadata entry of a .tflite file, by name (reads the flatbuffer lazily)."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        entries = {}
        for i in range(model.MetadataLength()):
            meta = model.Metadata(i)
            buf = model.Buffers(meta.Buffer())
            if buf.Offset() > 1:  # large models keep buffers after the flatbuffer
                raw = data[buf.Offset():buf.Offset() + buf.Size()]
            else:
                raw = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
            entries[_decode(meta.Name())] = raw
    except Exception as exc:
        raise UsageError(f"{path}: not a readable .tflite model ({type(exc).__name__})",
                         "check the file is complete") from None
    return entries


def read_embedded_contract(path: str | Path) -> dict[str, Any] | None:
    """The preprocessing contract written by `embed_metadata`, or None when the file has none.

    `Preprocess.from_dict(result["preprocess"])` rebuilds the contract object.
    """
    raw = read_metadata(path).get(METADATA_NAME)
    return json.loads(raw.rstrip(b"\0").decode()) if raw else None


def op_histogram(path: Path) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append(names.get(builtin, f"custom:{_decode(code.CustomCode())}" if code.CustomCode() else str(builtin)))
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            name = codes[graph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
