"""The `edgetpu` target and its static EdgeTPU check.

Why: `edgetpu_compiler` runs only on x86-64 Debian/Ubuntu hosts, so most places that build the
int8 TFLite model cannot compile it. The check reads the flatbuffer (the TFLite package's reader,
mnv4_deploy.converters.tflite.flatbuffer; flatbuffer.py here maps its errors into this package's family), judges
subgraph 0's ops in execution order against the EdgeTPU's documented operation table (rules.py)
and reports where the accelerator's partition would end (report.py), so a model that would leave
the accelerator is refused or reported before anyone ships it. Where the compiler *is*
installed, compiler.py runs it and parses its op table into the same row form. target.py is the
converter itself; errors.py the error family. Importing this package does not import TensorFlow.
"""
from __future__ import annotations

from .compiler import (
    MAPPED_STATUS,
    CompilerLog,
    CompilerLogRow,
    EdgeTpuCompilerFailed,
    find_edgetpu_compiler,
    parse_compiler_log,
    parse_size,
    run_edgetpu_compiler,
)
from .errors import (
    INSTALL_HINT,
    EdgeTpuCheckError,
    EdgeTpuCompilerMissing,
    NotAFlatbufferError,
    TfliteSchemaMissing,
)
from .flatbuffer import TFLITE_IDENTIFIER, OpInfo, TensorInfo, TfliteGraph, read_tflite
from .report import BOUNDARY, FALLS_BACK, EdgeTpuReport, OpRow, check_tflite
from .rules import (
    EDGETPU_CUSTOM_OP,
    GENERIC_CHECKS,
    OP_TABLE,
    UNSUPPORTED_HINTS,
    Check,
    OpRule,
    op_reasons,
)
from .target import (
    DEFAULT_IO_DTYPE,
    EDGETPU,
    EdgeTpuConverter,
    compile_if_available,
    edgetpu_io_dtype,
    static_check_summary,
)

__all__ = [
    "BOUNDARY", "Check", "CompilerLog", "CompilerLogRow", "DEFAULT_IO_DTYPE", "EDGETPU", "EDGETPU_CUSTOM_OP",
    "EdgeTpuCheckError", "EdgeTpuCompilerFailed", "EdgeTpuCompilerMissing", "EdgeTpuConverter", "EdgeTpuReport",
    "FALLS_BACK", "GENERIC_CHECKS", "INSTALL_HINT", "MAPPED_STATUS", "NotAFlatbufferError", "OP_TABLE", "OpInfo",
    "OpRow", "OpRule", "TFLITE_IDENTIFIER", "TensorInfo", "TfliteGraph", "TfliteSchemaMissing",
    "UNSUPPORTED_HINTS", "check_tflite", "compile_if_available", "edgetpu_io_dtype", "find_edgetpu_compiler",
    "op_reasons", "parse_compiler_log", "parse_size", "read_tflite", "run_edgetpu_compiler",
    "static_check_summary",
]
