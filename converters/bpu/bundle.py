"""The bundle directory as a unit: its manifest, its SHA256SUMS, and how to recognize one.

The manifest says what the bundle was built from (model, weights hash, contract, calibration
set hash, tool versions) and what was measured; SHA256SUMS (`sha256sum -c` format) covers every
other file. Neither holds a date or an absolute path, so a rebuild from the same inputs gives
the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from mnv4_deploy.artifacts import sha256_path
from mnv4_deploy.checksums import SUMS_FILE, files_of, sha256sums
from mnv4_deploy.errors import UsageError

KIND = "mnv4-deploy hb_mapper bundle"
MANIFEST = "manifest.json"
SUFFIX = ".bpu"  # every bundle directory ends with .<march>.bpu


def state_sha256(model: Any) -> str:
    """A hash of the exported weights themselves (names, dtypes, shapes, bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_section(model_info: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """The model facts worth carrying to the vendor: no absolute paths, no file lists."""
    keep = ("name", "timm_name", "source", "weights", "weights_sha256", "num_classes", "parameters")
    section = {k: model_info[k] for k in keep if k in model_info}
    if "weights_file" in model_info:
        section["weights_file"] = Path(str(model_info["weights_file"])).name
    section["exported_weights_sha256"] = state_sha256(model)
    return section


def write_manifest(bundle: Path, manifest: Mapping[str, Any]) -> Path:
    path = bundle / MANIFEST
    path.write_text(json.dumps({"kind": KIND, **manifest}, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_sums(bundle: Path) -> Path:
    """SHA256SUMS over every file of the bundle but itself, sorted by path."""
    path = bundle / SUMS_FILE
    path.write_text(sha256sums(files_of(bundle, skip={SUMS_FILE}), bundle))
    return path


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, or a usage error saying the directory is not a bundle."""
    path = Path(bundle) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{bundle}: not a BPU bundle (no readable {MANIFEST})",
                         "pass a directory written by --to bpu-x5 or bpu-x3") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UsageError(f"{bundle}: {MANIFEST} is not a BPU bundle manifest", "pass a bundle directory")
    return data


def is_bundle(path: Path) -> bool:
    if not (path.is_dir() and path.name.endswith(SUFFIX)):
        return False
    try:
        read_manifest(path)
    except UsageError:
        return False
    return True


def enclosing_bundle(path: Path) -> Path | None:
    """The bundle that `path` is (or lies inside), if any."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if is_bundle(candidate):
            return candidate
    return None
