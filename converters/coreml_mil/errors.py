"""Errors of the CoreML ML Program reference executor; all share one base class."""
from __future__ import annotations


class MilExecutorError(Exception):
    """Base class: anything the executor refuses or cannot do."""


class UnsupportedOpError(MilExecutorError):
    """The program holds an op (or an op variant) the executor has no kernel for."""

    def __init__(self, op_type: str, op_name: str, detail: str = ""):
        self.op_type = op_type
        self.op_name = op_name
        suffix = f": {detail}" if detail else ""
        super().__init__(f"unsupported MIL op {op_type!r} (op {op_name!r}){suffix}")


class CorruptModelError(MilExecutorError):
    """The path is not a readable .mlpackage ML Program (bad layout, manifest, spec or weights)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class BadInputError(MilExecutorError, ValueError):
    """`run` got a missing, unknown or wrongly shaped input."""
