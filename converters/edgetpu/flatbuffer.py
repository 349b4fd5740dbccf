"""The TFLite reader as the EdgeTPU check uses it: mnv4_deploy.converters.tflite.flatbuffer reads the file (the
reader is TFLite knowledge and imports no other target); here its refusals are re-raised as this
package's errors, so everything the check and the compiler runner raise stays an EdgeTpuCheckError."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..tflite import flatbuffer as tflite_flatbuffer
from ..tflite.flatbuffer import TFLITE_IDENTIFIER, OpInfo, TensorInfo, TfliteGraph
from .errors import NotAFlatbufferError, TfliteSchemaMissing

__all__ = ["TFLITE_IDENTIFIER", "OpInfo", "TensorInfo", "TfliteGraph", "read_flatbuffer_bytes", "read_tflite"]


@contextlib.contextmanager
def _as_edgetpu_errors() -> Iterator[None]:
    """Map the reader's error family onto this package's subclasses of it (same message, hint, exit code)."""
    try:
        yield
    except tflite_flatbuffer.NotAFlatbufferError as exc:
        raise NotAFlatbufferError(exc.message, exc.hint) from exc
    except tflite_flatbuffer.TfliteSchemaMissing as exc:
        raise TfliteSchemaMissing(exc.message, exc.hint) from exc


def read_tflite(path: str | Path) -> TfliteGraph:
    """Subgraph 0 of a .tflite file; NotAFlatbufferError (an EdgeTpuCheckError) for anything else."""
    with _as_edgetpu_errors():
        return tflite_flatbuffer.read_tflite(path)


def read_flatbuffer_bytes(path: Path) -> bytes:
    """The file's bytes, refused with one line (NotAFlatbufferError) unless it carries the TFL3 identifier."""
    with _as_edgetpu_errors():
        return tflite_flatbuffer.read_flatbuffer_bytes(path)
