"""What an ExecuTorch or OpenVINO artifact says about itself: contract, classes, plan hash.

Both runtimes can hold a small JSON document inside the artifact (a .pte constant method, the
IR's rt_info), so an app or `inspect` learns the preprocessing and which int8 plan it carries
without the report beside it. Light on purpose: no backend imports.
"""
from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

SCHEMA = "mnv4_deploy.artifact/1"


def plan_sha256(plan: Any) -> str:
    """A hash of the numbers an int8 plan fixes: integer weights and scales, activation grids.

    Stable across processes (no timings, no object ids), so two exports of the same plan carry
    the same hash and an artifact can be traced to the report of the run that made it.
    """
    h = hashlib.sha256()
    for layer in sorted(plan.weight_scales):
        h.update(layer.encode() + b"\0")
        h.update(np.ascontiguousarray(plan.weight_ints(layer), np.int8).tobytes())
        h.update(np.ascontiguousarray(plan.weight_scales[layer], np.float64).tobytes())
    for point, q in sorted(plan.activation_ranges.items()):
        h.update(f"{point}:{float(q.scale)!r}:{q.zero_point}:{q.qmin}:{q.qmax}".encode())
    h.update(("float:" + ",".join(plan.float_layers)).encode())
    return h.hexdigest()


def tool_versions(packages: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def artifact_metadata(job: Any, target: str, precision: str, num_classes: int, plan: Any = None,
                      packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document embedded in the artifact (sorted JSON keeps the bytes reproducible)."""
    shape = [int(d) for d in job.example.shape]
    meta: dict[str, Any] = {"schema": SCHEMA, "producer": "mnv4-deploy", "model": job.stem, "target": target,
                            "precision": precision, "preprocess": job.contract.to_dict(), "input_layout": "NCHW",
                            "input_shape": shape, "num_classes": int(num_classes),
                            "tools": tool_versions(("torch", *packages))}
    if plan is not None:
        meta["int8_plan_sha256"] = plan_sha256(plan)
    return meta
