"""Damaged artifacts given to validate, inspect and check: one line, exit 2, no traceback, no hang.

Real artifacts of every format (ONNX, TFLite, Core ML package, BPU bundle) are built once per
module from the trained digits net (32 px), then emptied, truncated, replaced by random bytes,
and fuzzed (tests/reliability_fuzz.py, in a child process so a native crash is counted).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy.cli import app
from mnv4_deploy.pipeline import export

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
ARTIFACTS = {"onnx": "digits.onnx", "tflite": "digits.tflite", "mlpackage": "digits.mlpackage",
             "bpu": "digits.bayes-e.bpu"}
# the file of each format a damage goes to (directories: their most important file)
INNER = {"onnx": "", "tflite": "", "mlpackage": "Data/com.apple.CoreML/model.mlmodel", "bpu": "digits.onnx"}


@pytest.fixture(scope="module")
def artifacts(trained_digits, digit_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    report = export(trained_digits.model, "onnx,tflite,coreml,bpu-x5", out, contract=trained_digits.contract,
                    name="digits", calib_data=digit_folders[0], calib_size=4, golden_count=2, log=lambda _: None)
    assert [r.status for r in report.results] == ["passed"] * 4, [(r.target, r.reason) for r in report.results]
    return out


def _damaged(artifacts: Path, fmt: str, damage: str, dest: Path) -> Path:
    src = artifacts / ARTIFACTS[fmt]
    target = dest / src.name
    shutil.copytree(src, target) if src.is_dir() else shutil.copy2(src, target)
    victim = target / INNER[fmt] if INNER[fmt] else target
    whole = victim.read_bytes()
    if damage == "empty":
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
        else:
            victim.write_bytes(b"")
    elif damage == "truncated":
        victim.write_bytes(whole[: len(whole) // 3])
    elif damage == "random":
        victim.write_bytes(np.random.default_rng(len(whole)).bytes(len(whole)))
    return target


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
@pytest.mark.parametrize("fmt", sorted(ARTIFACTS))
def test_inspect_refuses_damaged_artifacts_in_one_line(artifacts, tmp_path, fmt, damage):
    path = _damaged(artifacts, fmt, damage, tmp_path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path.name) in _one_error_line(result)


def test_inspect_reads_every_intact_format(artifacts):
    for fmt, name in ARTIFACTS.items():
        result = runner.invoke(app, ["inspect", str(artifacts / name)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["outputs"], fmt


@pytest.mark.parametrize("fmt, target, damage", [("tflite", "edgetpu", "truncated"), ("tflite", "edgetpu", "random"),
                                                 ("tflite", "edgetpu", "empty"), ("onnx", "bpu-x5", "truncated"),
                                                 ("onnx", "bpu-x5", "random"), ("onnx", "bpu-x3", "empty")])
def test_check_refuses_damaged_models_in_one_line(artifacts, tmp_path, fmt, target, damage):
    path = _damaged(artifacts, fmt, damage, tmp_path)
    result = runner.invoke(app, ["check", str(path), "--target", target])
    assert result.exit_code == 2, result.output
    assert str(path.name) in _one_error_line(result)


@pytest.mark.parametrize("fmt, damage", [("onnx", "truncated"), ("tflite", "random"), ("mlpackage", "truncated"),
                                         ("bpu", "random"), ("bpu", "empty")])
def test_validate_refuses_damaged_artifacts_in_one_line(artifacts, tmp_path, fmt, damage):
    path = _damaged(artifacts, fmt, damage, tmp_path)
    result = runner.invoke(app, ["validate", str(path), "--model", "conv_small_050", "--num-classes", "10",
                                 "--img-size", "32", "--golden-count", "2"])
    assert result.exit_code == 2, result.output
    assert str(path.name) in _one_error_line(result)


def test_validate_refuses_truncated_core_ml_weights_that_inspect_does_not_read(artifacts, tmp_path):
    package = tmp_path / ARTIFACTS["mlpackage"]
    shutil.copytree(artifacts / ARTIFACTS["mlpackage"], package)
    weights = package / "Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert runner.invoke(app, ["inspect", str(package)]).exit_code == 0  # the spec alone is intact
    result = runner.invoke(app, ["validate", str(package), "--model", "conv_small_050", "--num-classes", "10",
                                 "--img-size", "32", "--golden-count", "2"])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert package.name in line and "truncated" in line


def test_a_fifo_named_like_an_artifact_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["inspect", str(fifo)])
    assert result.exit_code == 2 and "not a regular file or directory" in _one_error_line(result)


def test_a_reader_that_hangs_is_stopped_by_the_time_limit(artifacts, monkeypatch):
    import time

    import mnv4_deploy.converters.onnx as onnx_converter

    def forever(_path):
        while True:
            time.sleep(0.01)

    # Read the intact artifact once first, so every import `inspect` needs is done before the 1 s
    # limit runs: an alarm that lands inside a half-done import of a native library (TensorFlow,
    # onnxruntime) leaves it half-initialized, and a later test then crashes the whole process.
    assert runner.invoke(app, ["inspect", str(artifacts / ARTIFACTS["onnx"])]).exit_code == 0
    monkeypatch.setattr(onnx_converter.OnnxConverter, "describe", lambda self, path: forever(path))
    monkeypatch.setenv("MNV4_DEPLOY_READ_TIMEOUT", "1")
    result = runner.invoke(app, ["inspect", str(artifacts / ARTIFACTS["onnx"])])
    assert result.exit_code == 2
    assert "took longer than 1 s" in _one_error_line(result)


def test_fuzzing_the_readers_never_escapes_crashes_or_hangs(artifacts, tmp_path):
    """200 seeded truncations and byte flips (500 reader calls: describe, check, opening the runtime)."""
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "reliability_fuzz.py"), str(artifacts), "200", "16",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    progress = Path(str(out) + ".progress")
    assert proc.returncode == 0, (f"the fuzz process died (rc {proc.returncode}) at "
                                  f"{progress.read_text() if progress.exists() else '?'}: {proc.stderr[-1500:]}")
    tally = json.loads(out.read_text())
    assert tally["tried"] == 500 and set(tally["per_format"]) == set(ARTIFACTS)
    assert tally["not_clean"] == [] and tally["clean"] == tally["tried"]
    assert tally["timeout"] == 0 and tally["slowest_s"] < 30


def test_a_random_pte_is_refused_before_the_executorch_runtime_can_abort(tmp_path):
    """The runtime logs a bad identifier with the raw bytes, its bindings cannot decode that line
    and the process aborts (exit 134); the header check refuses such files first."""
    pytest.importorskip("executorch.runtime")
    from mnv4_deploy.converters.executorch.runtime import check_pte_header

    good_head = (60).to_bytes(4, "little") + b"ET12" + b"eh00" + (32).to_bytes(4, "little")
    cases = {"random.pte": np.random.default_rng(3).bytes(3000),
             "truncated.pte": good_head + (10**6).to_bytes(8, "little") + (10**6).to_bytes(8, "little") + bytes(40),
             "short.pte": b"\x10\x00\x00\x00ET"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(Exception) as caught:
            check_pte_header(tmp_path / name)
        assert caught.value.exit_code == 2 and name in str(caught.value)
    proc = subprocess.run([sys.executable, "-m", "mnv4_deploy.cli", "inspect", str(tmp_path / "random.pte")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "random.pte: not an ExecuTorch program (no ET flatbuffer identifier" in proc.stderr
