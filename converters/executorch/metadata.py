"""What an ExecuTorch or OpenVINO artifact says about itself: contract, classes, plan hash.

Both runtimes can hold a small JSON document inside the artifact (a .pte constant method, the
IR's rt_info), so an app or `inspect` learns the preprocessing and which int8 plan it carries
without the report beside it. Light on purpose: no backend imports.
"""
from __future__ import annotations

from typing import Any

from mnv4_deploy.provenance import tool_versions

SCHEMA = "mnv4_deploy.artifact/1"


def artifact_metadata(job: Any, target: str, precision: str, num_classes: int, plan: Any = None,
                      packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document embedded in the artifact (sorted JSON keeps the bytes reproducible)."""
    shape = [int(d) for d in job.example.shape]
    meta: dict[str, Any] = {"schema": SCHEMA, "producer": "mnv4-deploy", "model": job.stem, "target": target,
                            "precision": precision, "preprocess": job.contract.to_dict(), "input_layout": "NCHW",
                            "input_shape": shape, "num_classes": int(num_classes),
                            "tools": tool_versions(("torch", *packages))}
    if plan is not None:
        meta["int8_plan_sha256"] = plan.sha256
    return meta
