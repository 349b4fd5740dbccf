"""Names, option checks and tool versions shared by the TFLite modules (no heavy imports)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from mnv4_deploy.errors import UsageError
from mnv4_deploy import provenance
from mnv4_deploy.options import TargetOption

METADATA_NAME = "mnv4_deploy.preprocess"
METADATA_SCHEMA = "mnv4_deploy.preprocess/1"
LAYOUTS = ("nhwc", "nchw")
LAYOUT = TargetOption("layout", str, "nhwc", "input layout, nhwc (mobile) or nchw", panel="TFLite", choices=LAYOUTS)
NUM_THREADS = 2
# Declared in every TFLite artifact's metadata, carried by the manifest (tests/test_reproducible.py checks bytes)
REPRODUCIBLE = provenance.byte_identical("the flatbuffer stores no timestamps and the embedded contract is sorted JSON")
_PACKAGES = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r} is not supported by the TFLite targets",
                         f"use one of: {', '.join(LAYOUTS)} (nhwc is what mobile apps feed)")


def tool_versions() -> dict[str, str]:
    """The versions of the packages a TFLite artifact is made with (embedded in it and its report)."""
    return provenance.tool_versions(_PACKAGES)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """litert-torch prints a progress tree to stdout unless told not to; restore afterwards."""
    key, old = "LITERT_TORCH_SHOW_PROGRESS", os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
