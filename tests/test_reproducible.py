"""Exporting the same model, weights and options twice gives byte-identical artifacts.

Where a converter cannot promise that, it says so in its artifact metadata
(`reproducible: False` with `reproducible_reason`), which the manifest carries; such a target
is checked for the reason instead of the bytes.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mnv4_deploy import export
from mnv4_deploy.registry import find_targets, load_target

from conftest import SMALL, make_images

FAST = ["onnx", "onnx-fp16", "coreml"]


def _installed(names):
    found = []
    for name in names:
        if name in find_targets() and not load_target(name).info.missing_backends():
            found.append(name)
    return found


def _check_identical(first, second, targets):
    a = {r.target: r for r in first.results}
    b = {r.target: r for r in second.results}
    for target in targets:
        for run in (a, b):  # a failed export has no bytes to compare: that is a failure, not a pass
            assert run[target].status != "export_failed", f"{target}: export failed: {run[target].reason}"
        declared = a[target].reproducibility()
        assert declared["reproducible"] is not None, f"{target}: the converter does not declare reproducibility"
        if declared["reproducible"] is False:
            assert declared["reason"], f"{target}: not reproducible, and no reason given"
            continue
        assert a[target].sha256 == b[target].sha256, f"{target}: artifact bytes differ between two exports"


def test_fast_targets_reexport_byte_identically(tmp_path):
    targets = _installed(FAST)
    if not targets:
        pytest.skip("no fast target installed")
    kwargs = dict(img_size=SMALL, golden_count=3, log=lambda _: None)
    first = export("conv_small", targets, tmp_path / "a", **kwargs)
    second = export("conv_small", targets, tmp_path / "b", **kwargs)
    _check_identical(first, second, targets)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        assert set(art["reproducibility"]) == {"reproducible", "reason"}


SCRIPT = """
import json, sys
from mnv4_deploy import export
r = export("conv_small", sys.argv[1].split(","), sys.argv[2], img_size=int(sys.argv[3]), golden_count=3,
           calib_data=sys.argv[4], calib_size=8, log=lambda _: None)
print(json.dumps({x.target: [x.status, x.sha256, x.reason] for x in r.results}))
"""


@pytest.mark.slow
def test_every_installed_target_reexports_byte_identically_across_processes(tmp_path):
    """Two separate processes (fresh interpreter state, new temp dirs) per installed target."""
    targets = _installed(list(find_targets()))
    calib = tmp_path / "calib"
    make_images(calib, 8)
    runs = []
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(targets), str(tmp_path / name), str(SMALL),
                               str(calib)], capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    declared = {a["target"]: a["reproducibility"] for a in manifest["artifacts"]}
    for target in targets:
        (status_a, sha_a, reason_a), (status_b, sha_b, reason_b) = runs[0][target], runs[1][target]
        assert "export_failed" not in (status_a, status_b), f"{target}: export failed: {reason_a or reason_b}"
        if declared[target]["reproducible"] is False:
            assert declared[target]["reason"]
            continue
        assert sha_a == sha_b, f"{target}: artifact bytes differ between two processes"
