"""What an artifact was made with: package versions and the reproducibility a converter declares.

One home for both, so the report, the manifest, a BPU bundle's own manifest and every
converter's embedded metadata read versions the same way (from package metadata, never by
importing the package) and state reproducibility under the same keys.
"""
from __future__ import annotations

import platform
import re
from importlib.metadata import PackageNotFoundError, requires, version
from typing import Any, Iterable, Mapping

# Packages whose versions decide what an artifact contains (the report's and manifest's `versions`).
TRACKED_PACKAGES = ("mnv4-deploy", "torch", "timm", "numpy", "onnx", "onnxsim", "onnxruntime", "onnxscript",
                    "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "tensorflow-cpu", "coremltools")
NOT_INSTALLED = "not installed"
UNKNOWN_OWN_VERSION = "0+unknown"  # running from a source tree that was never installed

# The claim every deterministic converter makes; each adds why its bytes do not vary.
BYTE_IDENTICAL = "byte-identical for the same model, options and tool versions"


def package_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def tool_versions(names: Iterable[str], missing: str | None = NOT_INSTALLED) -> dict[str, str]:
    """Versions of `names`; a missing package maps to `missing`, or is left out when that is None."""
    found: dict[str, str] = {}
    for name in names:
        value = package_version(name)
        if value is not None:
            found[name] = value
        elif missing is not None:
            found[name] = missing
    return found


def package_versions() -> dict[str, str]:
    """Python and every tracked package that is installed (the report's `versions`)."""
    return {"python": platform.python_version(), **tool_versions(TRACKED_PACKAGES, missing=None)}


# The extras that bring a backend (`pip install 'mnv4-deploy[NAME]'`), and the core packages that matter as one.
BACKEND_EXTRAS = ("onnx", "tflite", "coreml", "executorch", "openvino", "ethos")
CORE_BACKENDS = ("torch", "torchvision", "timm", "numpy")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w-]+)["']""")


def backend_versions() -> dict[str, dict[str, str]]:
    """Per extra (and "core"), each package it requires with its installed version or "not installed".

    Read from this distribution's metadata, so nothing heavy is imported; run from a source tree
    that was never installed, the extras are unknown and only the core is listed.
    """
    groups: dict[str, dict[str, str]] = {"core": tool_versions(CORE_BACKENDS)}
    try:
        requirements = requires("mnv4-deploy") or []
    except PackageNotFoundError:
        return groups
    for line in requirements:
        marker = _EXTRA_MARKER.search(line)
        name = re.match(r"[A-Za-z0-9._-]+", line).group(0)  # type: ignore[union-attr]
        if marker and marker.group(1) in BACKEND_EXTRAS and name != "mnv4-deploy":
            groups.setdefault(marker.group(1), {}).update(tool_versions([name]))
    return groups


def own_version() -> str:
    """This tool's version, written into artifacts as their producer's."""
    return package_version("mnv4-deploy") or UNKNOWN_OWN_VERSION


def reproducible(reason: str) -> dict[str, Any]:
    """The metadata keys a converter sets when re-exporting gives the same bytes, and why."""
    return {"reproducible": True, "reproducible_reason": reason}


def byte_identical(why: str) -> dict[str, Any]:
    """`reproducible` with the common claim, `why` naming what keeps this format's bytes stable."""
    return reproducible(f"{BYTE_IDENTICAL}: {why}")


def reproducibility(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an artifact's metadata says about re-exporting byte-identically (None: it does not say)."""
    meta = metadata or {}
    return {"reproducible": meta.get("reproducible"),
            "reason": meta.get("reproducible_reason") or (None if "reproducible" in meta
                                                          else "not declared by the converter")}
