"""mnv4-deploy: MobileNet-V4 from PyTorch to every device family, with proof of parity.

The Python API mirrors the CLI: `export(...)` returns a `Report`. Importing this package is
cheap; torch and the converters' backends load only when a command needs them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["export", "prepare_model", "Preprocess", "ExportOptions", "Report", "__version__"]

if TYPE_CHECKING:
    from .pipeline import export, prepare_model
    from .preprocess import Preprocess
    from .registry import ExportOptions
    from .report import Report


def __getattr__(name: str) -> Any:
    if name in ("export", "prepare_model"):
        from . import pipeline
        return getattr(pipeline, name)
    if name == "Preprocess":
        from .preprocess import Preprocess
        return Preprocess
    if name == "ExportOptions":
        from .registry import ExportOptions
        return ExportOptions
    if name == "Report":
        from .report import Report
        return Report
    raise AttributeError(name)
