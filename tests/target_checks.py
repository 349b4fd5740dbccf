"""Checks every target family's tests make the same way: one digits run, re-judging, a missing backend.

Shared so that a new target's test file states only what is particular to it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mnv4_deploy.errors import BackendMissing

QUIET = dict(log=lambda _: None)


def export_digits(net: Any, folders: tuple[Path, Path], targets: str, out: Path, **kwargs: Any) -> Any:
    """One export of the trained digits net named "digits" (calibration and held-out folders), one torch thread.

    The digits net works on 32x32 tensors, where a 2-thread pool is 20-30x slower on the shared
    2-core machine (conftest.one_torch_thread); the runtimes keep their own threads.
    """
    from mnv4_deploy import export
    from mnv4_deploy.quant.threads import single_thread

    calib, heldout = folders
    with single_thread():
        return export(net.model, targets, out, contract=net.contract, name="digits", calib_data=calib,
                      eval_data=heldout, **QUIET, **kwargs)


def digits_run_fixture(targets: str) -> Any:
    """A module-scoped `digits_run` fixture: (report, out) of one digits run of `targets` (one plan)."""

    @pytest.fixture(scope="module")
    def digits_run(trained_digits, digit_folders, tmp_path_factory):
        out = tmp_path_factory.mktemp(f"digits-{targets.split(',')[0]}") / "out"
        return export_digits(trained_digits, digit_folders, targets, out), out

    return digits_run


def check_digits_fp32_and_int8(report: Any, fp32: str, int8: str) -> tuple[Any, Any]:
    """The digits run passed; the fp32 form is exact (no drop) and the int8 form keeps the onnx-int8 bound.

    Returns both results for the target-specific checks.
    """
    from test_int8_pipeline import INT8_BOUND

    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    fp32_result, int8_result = report.result(fp32), report.result(int8)
    assert fp32_result.parity["sqnr_db"] > 60 and fp32_result.accuracy["drop_top1"] == 0.0
    assert int8_result.accuracy["drop_top1"] <= INT8_BOUND, int8_result.accuracy
    return fp32_result, int8_result


def inspect_digits_artifact(path: Path, target: str, fmt: str) -> dict:
    """`mnv4-deploy inspect` of a digits artifact: its target, format, 32 px input and 10 classes.

    Returns the artifact's embedded metadata.
    """
    import json

    from mnv4_deploy.cli import app

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["target"] == target and facts["format"] == fmt
    assert facts["inputs"][0]["shape"] == [1, 3, 32, 32] and facts["outputs"][0]["shape"] == [1, 10]
    assert facts["metadata"]["num_classes"] == 10
    return facts["metadata"]


def check_rejudged_and_other_model_refused(fp32_artifact: Path, target: str, int8_artifact: Path, net: Any) -> Any:
    """`validate` passes the digits artifact against its model, and names the shape of another model (exit 2).

    Returns the fp32 artifact's re-validation report for target-specific checks.
    """
    from mnv4_deploy.cli import app
    from mnv4_deploy.pipeline import validate_artifact

    again = validate_artifact(fp32_artifact, net.model, contract=net.contract, name="digits", golden_count=3, **QUIET)
    assert again.exit_code == 0 and again.results[0].target == target, [(r.target, r.failures) for r in again.results]
    result = CliRunner().invoke(app, ["validate", str(int8_artifact), "-m", "conv_small", "--img-size", "64",
                                      "--golden-count", "2"])
    assert result.exit_code == 2 and "input shape [1, 3, 32, 32] does not match the model's" in result.stderr
    return again


def check_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch, converter: Any, module: str,
                                          extra: str) -> None:
    """With `module` not importable, the converter refuses with exit 5 naming `pip install 'mnv4-deploy[extra]'`."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(BackendMissing, match=rf"mnv4-deploy\[{extra}\]") as caught:
        converter.info.require_backends()
    assert caught.value.exit_code == 5
