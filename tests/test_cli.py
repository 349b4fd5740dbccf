"""The CLI end to end: exit codes, files written, report contents, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mnv4_deploy.cli import app, export_app

from conftest import SMALL, make_images

runner = CliRunner()
FAST = ["--img-size", str(SMALL), "--golden-count", "3"]


def _export(*args: str):
    return runner.invoke(export_app, list(args))


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_console_script_exports_validates_and_writes_evidence(tmp_path):
    exe = shutil.which("mnv4-export", path=str(Path(sys.executable).parent)) or shutil.which("mnv4-export")
    assert exe, "the mnv4-export console script is not installed (pip install -e .)"
    out = tmp_path / "out"
    proc = subprocess.run([exe, "--model", "conv_small", "--to", "onnx", "--out", str(out), *FAST],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "passed" in proc.stdout and "\x1b[" not in proc.stdout + proc.stderr  # plain text when not a TTY
    assert "random init" in proc.stderr  # stated on the console
    assert _files(out) == ["SHA256SUMS", "conv_small.onnx", "manifest.json", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["exit_code"] == 0 and report["model"]["weights"].startswith("random init")
    assert report["contract"]["crop_size"] == [SMALL, SMALL] and report["contract"]["interpolation"] == "bicubic"
    assert report["canonical"]["norms_folded"] == 46
    parity = report["results"][0]["parity"]
    assert parity["cosine"] > 0.99999 and {"max_abs", "mean_abs", "sqnr_db", "top1_agreement"} <= set(parity)
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["file"] == "conv_small.onnx" and art["size_bytes"] == (out / "conv_small.onnx").stat().st_size
    assert manifest["versions"]["torch"].startswith("2.14.1") and manifest["contract_sha256"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and "conv_small.onnx: OK" in check.stdout


def test_mnv4_deploy_export_json_and_multiple_targets(tmp_path):
    result = runner.invoke(app, ["export", "-m", "conv_small", "--to", "onnx,onnx-fp16", "-o", str(tmp_path),
                                 "--output", "json", *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["target"] for r in data["results"]] == ["onnx", "onnx-fp16"]
    assert all(r["status"] == "passed" for r in data["results"])


def test_models_and_targets_commands():
    models = runner.invoke(app, ["models"])
    assert models.exit_code == 0
    for name in ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large", "conv_blur_medium"):
        assert name in models.stdout
    targets = runner.invoke(app, ["targets", "--output", "json"])
    rows = {r["target"]: r for r in json.loads(targets.stdout)}
    assert rows["onnx"]["installed"] is True and rows["onnx-fp16"]["precision"] == "fp16"


def test_targets_listing_and_export_help_do_not_import_heavy_backends():
    code = ("import sys; from mnv4_deploy.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['targets']); assert r.exit_code == 0, r.output; "
            "h = CliRunner().invoke(app, ['export', '--help']); assert h.exit_code == 0, h.output; "
            "assert '--io-dtype' in h.output and '--bpu-input' in h.output, h.output; "
            "heavy = [m for m in ('torch', 'tensorflow', 'coremltools', 'onnxruntime', 'timm', 'executorch', 'openvino') if m in sys.modules]; "
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args, code, message", [
    (["--model", "conv_smal"], 2, "unknown model 'conv_smal' (did you mean conv_small"),
    (["--to", "tflite-int9"], 2, "unknown target 'tflite-int9'"),
    (["--opset", "7"], 2, "--opset 7 is not supported"),
    (["--img-size", "8"], 2, "--img-size 8: must be between"),
    (["--quant-config", "missing.yaml"], 2, "no such file"),
])
def test_bad_input_is_one_line_with_its_exit_code(tmp_path, args, code, message):
    out = tmp_path / "out"
    result = _export("--out", str(out), *args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in result.output
    assert not [f for f in _files(out) if not f.startswith(".tmp-")]  # nothing half-written


def test_weights_that_do_not_match_are_named_and_nothing_is_written(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, weights)
    out = tmp_path / "out"
    result = _export("--weights", str(weights), "--out", str(out), *FAST)
    assert result.exit_code == 2 and "does not match the architecture" in result.stderr
    assert "conv_stem.weight: file (1,)" in result.stderr
    assert _files(out) == []


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a directory")
    result = _export("--out", str(blocker / "sub"), *FAST)
    assert result.exit_code == 2 and "cannot write there" in result.stderr


def test_data_folder_without_images_and_with_one_corrupt_image(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _export("--data", str(empty), "--out", str(tmp_path / "o1"), *FAST)
    assert result.exit_code == 2 and "no images found" in result.stderr
    images = tmp_path / "imgs"
    make_images(images, 3)
    (images / "zz_broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "o2"
    result = _export("--data", str(images), "--out", str(out), "--img-size", str(SMALL))  # 8 golden > 4 files
    assert result.exit_code == 0, result.output
    assert "skipping unreadable image zz_broken.png" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["golden"]["skipped"] == ["zz_broken.png"] and report["golden"]["count"] == 3


def test_missing_backend_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = _export("--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code == 5
    assert "needs onnxruntime" in result.stderr and "pip install 'mnv4-deploy[onnx]'" in result.stderr


def test_unexpected_failure_is_exit_1_with_a_debug_hint(tmp_path, monkeypatch):
    import mnv4_deploy.pipeline as pipeline

    def boom(*_a, **_k):
        raise RuntimeError("simulated backend crash")

    monkeypatch.setattr(pipeline, "prepare_model", boom)
    result = _export("--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code == 1
    assert "RuntimeError: simulated backend crash" in result.stderr and "MNV4_DEPLOY_DEBUG=1" in result.stderr


def test_export_failure_keeps_going_and_reports_it(tmp_path, monkeypatch):
    import mnv4_deploy.converters.onnx as onnx_conv

    def fail(*_a, **_k):
        raise ValueError("converter exploded")

    monkeypatch.setattr(onnx_conv, "to_fp16", fail)
    out = tmp_path / "o"
    result = _export("--to", "onnx-fp16,onnx", "--out", str(out), *FAST)
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    statuses = {r["target"]: (r["status"], r["reason"]) for r in report["results"]}
    assert statuses["onnx-fp16"] == ("export_failed", "ValueError: converter exploded")
    assert statuses["onnx"][0] == "passed"
    assert not any(name.startswith(".tmp-") or name.endswith("fp16.onnx") for name in _files(out))
