"""`mnv4-deploy build --config deploy.yaml` and `merge-manifests`: the CI form of the matrix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mnv4_deploy.cli import app

from conftest import REPO, SMALL

runner = CliRunner()


def _config(tmp_path: Path, **changes) -> Path:
    raw = {"models": ["conv_small"], "targets": ["onnx", "onnx-fp16"], "img_size": SMALL,
           "data": {"golden_count": 3}, "thresholds": {"min_cosine": {"onnx": 0.9999}},
           "latency": {"warmup": 1, "runs": 3}, "out": "out"}
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            raw.setdefault(section, {})[sub] = value
        else:
            raw[section] = value
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"tresholds": {}}, "unknown key 'tresholds' (did you mean 'thresholds'?)"),
    ({"data__calib_sise": 10}, "unknown key data.'calib_sise'"),
    ({"targets": ["onnx", "onx"]}, "targets: unknown target 'onx'"),
    ({"thresholds__min_cosine": {"tflite-fp17": 0.9}}, "min_cosine: unknown target 'tflite-fp17'"),
    ({"models": ["conv_smal"]}, "models:"),
    ({"thresholds__max_drop": 150}, "thresholds.max_drop = 150 is out of range"),
    ({"thresholds__min_cosine": {"onnx": 1.5}}, "min_cosine.onnx = 1.5 is out of range"),
    ({"data__calib_size": 0}, "data.calib_size = 0 is out of range"),
    ({"img_size": "big"}, "img_size = 'big' is out of range"),
    ({"data__calib": "missing-dir"}, "data.calib"),
])
def test_bad_config_is_one_line_naming_the_problem(tmp_path, changes, message):
    result = runner.invoke(app, ["build", "--config", str(_config(tmp_path, **changes))])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_list_and_only_give_the_ci_job_matrix(tmp_path):
    config = _config(tmp_path, models=["conv_small", "conv_small_050"], data__calib="missing-on-the-planner")
    result = runner.invoke(app, ["build", "--config", str(config), "--list"])
    assert result.exit_code == 0, result.output
    pairs = [p["pair"] for p in json.loads(result.stdout)]
    assert pairs == ["conv_small:onnx", "conv_small:onnx-fp16", "conv_small_050:onnx", "conv_small_050:onnx-fp16"]
    result = runner.invoke(app, ["build", "--config", str(config), "--only", "conv_small:tflite", "--list"])
    assert result.exit_code == 2 and "not a model:target pair of this config" in result.stderr


def test_example_config_and_workflow_are_valid():
    result = runner.invoke(app, ["build", "--config", str(REPO / "examples" / "deploy.yaml"), "--list"])
    assert result.exit_code == 0, result.output
    example = yaml.safe_load((REPO / "examples" / "deploy.yaml").read_text())
    pairs = [p["pair"] for p in json.loads(result.stdout)]
    assert pairs == [f"{m}:{t}" for m in example["models"] for t in example["targets"]]
    workflow = yaml.safe_load((REPO / "examples" / "github-actions.yml").read_text())
    # the artifact build matrix, and the sharded 50,000-image evaluation fanned out beside it
    assert set(workflow["jobs"]) == {"plan", "build", "merge", "eval-shard", "eval-merge"}
    steps = " ".join(str(s.get("run", "")) for job in workflow["jobs"].values() for s in job["steps"])
    assert "--only" in steps and "merge-manifests" in steps and "--list" in steps
    assert "--eval-shard" in steps and "merge-eval" in steps


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    result = runner.invoke(app, ["build", "--config", str(_config(tmp)), "-q"])
    return tmp / "out", result


def test_build_gates_hold_and_exit_zero(built):
    out, result = built
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["status"] for a in manifest["artifacts"]] == ["passed", "passed"]
    assert manifest["artifacts"][0]["file"] == "conv_small/conv_small.onnx"


def test_merge_rechecks_checksums(built, tmp_path):
    out, _ = built
    copy = tmp_path / "ci-job"
    shutil.copytree(out, copy)
    result = runner.invoke(app, ["merge-manifests", str(copy), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "conv_small.fp16.onnx" in (tmp_path / "SHA256SUMS").read_text()
    assert (tmp_path / "report.html").read_text().count("<svg") >= 1
    with open(copy / "conv_small" / "conv_small.onnx", "ab") as fh:
        fh.write(b"tampered")
    result = runner.invoke(app, ["merge-manifests", str(copy), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 1 and "sha256 differs from the manifest" in result.stderr


def _weights_file(tmp_path: Path) -> Path:
    """conv_small's well-conditioned random init, saved: a weights file skips BatchNorm re-estimation,
    whose float sums (and so the artifact bytes) depend on torch's thread count."""
    import torch

    from mnv4_deploy.pipeline import prepare_model

    prepared = prepare_model("conv_small", img_size=SMALL, golden_count=3, log=lambda _: None)
    path = tmp_path / "conv_small.pth"
    torch.save(prepared.original.state_dict(), path)
    return path


@pytest.mark.slow
def test_parallel_jobs_give_the_same_results(tmp_path):
    """--jobs 2 (one process per target group, one torch thread each) gives what --jobs 1 gives, bytes included."""
    config = _config(tmp_path, weights={"conv_small": str(_weights_file(tmp_path))})
    rows = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        result = runner.invoke(app, ["build", "--config", str(config), "--jobs", str(jobs), "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        rows[jobs] = {(r["model"], r["target"]): r for r in report["rows"]}
        assert (out / "conv_small" / "conv_small.fp16.onnx").is_file() and not (out / ".units").exists()
    assert rows[1].keys() == rows[2].keys()
    for key, one in rows[1].items():
        two = rows[2][key]
        assert (one["status"], one["artifact"], one["size_mb"]) == (two["status"], two["artifact"], two["size_mb"])
        assert abs(one["cosine"] - two["cosine"]) < 1e-6 and one["sha256"] == two["sha256"]
