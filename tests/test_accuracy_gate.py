"""--eval-data / --max-drop: the drop is measured on labeled images and gates the exit code.

Random weights carry no accuracy, so the labeled set here is labeled *by the reference model
itself*: the reference scores 100% by construction and any artifact that computes something
else loses points. That exercises the real evaluation path end to end without a download.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy import export
from mnv4_deploy.cli import export_app
from mnv4_deploy.data import image_folder_batch
from mnv4_deploy.errors import UsageError
from mnv4_deploy.pipeline import prepare_model

from conftest import SMALL, make_images


@pytest.fixture(scope="module")
def self_labeled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    make_images(folder, 24, size=(96, 80), seed=5)
    prepared = prepare_model("conv_small", img_size=SMALL, golden_count=3, log=lambda _: None)
    batch = image_folder_batch(folder, prepared.contract, None)
    import torch

    with torch.no_grad():
        predicted = prepared.canonical(torch.from_numpy(batch.tensors)).argmax(1).numpy()
    rows = "".join(f"{f},{c}\n" for f, c in zip(batch.files, predicted))
    (folder / "labels.csv").write_text("file,class_index\n" + rows)
    return folder


def test_faithful_artifact_keeps_accuracy(self_labeled, tmp_path):
    report = export("conv_small", "onnx", tmp_path, img_size=SMALL, golden_count=3, eval_data=self_labeled,
                    max_drop=0.5, log=lambda _: None)
    acc = report.result("onnx").accuracy
    assert report.evaluation["reference_top1"] == 100.0 and report.evaluation["count"] == 24
    assert acc["top1"] == 100.0 and acc["drop_top1"] == 0.0 and report.exit_code == 0


def test_drop_over_budget_is_exit_4_with_its_interval(self_labeled, tmp_path, monkeypatch):
    import mnv4_deploy.converters.onnx as onnx_conv

    real = onnx_conv.ort_runner

    def lossy(path):
        runner = real(path)
        inner = runner.run
        # noise that flips close calls; the lenient recipe below lets parity pass, so only
        # the accuracy budget can fail
        runner.run = lambda batch: inner(batch) + np.random.default_rng(0).normal(0, 2.0, (len(batch), 1000)).astype(np.float32)
        return runner

    monkeypatch.setattr(onnx_conv, "ort_runner", lossy)
    result = CliRunner().invoke(export_app, ["--to", "onnx", "--out", str(tmp_path), "--img-size", str(SMALL),
                                             "--golden-count", "3", "--eval-data", str(self_labeled),
                                             "--max-drop", "1", "--quant-config", str(_lenient(tmp_path))])
    assert result.exit_code == 4, result.output
    saved = json.loads((tmp_path / "report.json").read_text())["results"][0]
    assert saved["status"] == "accuracy_failed"
    lo, hi = saved["accuracy"]["drop_top1_ci95"]
    assert saved["accuracy"]["drop_top1"] > 1 and lo <= saved["accuracy"]["drop_top1"] <= hi
    assert any("--max-drop 1" in f for f in saved["failures"])


def _lenient(tmp_path):
    """A recipe whose fp32 parity bounds accept the noisy runner, so only accuracy can fail."""
    path = tmp_path / "lenient.yaml"
    path.write_text("extends: default\nparity:\n  fp32: {min_cosine: 0.0, max_rel_abs: 100.0, "
                    "min_sqnr_db: -100.0, min_top1_agreement: 0.0}\n")
    return path


def test_max_drop_needs_eval_data_and_a_sane_value(tmp_path, self_labeled):
    with pytest.raises(UsageError, match="--max-drop needs labeled images"):
        export("conv_small", "onnx", tmp_path, max_drop=1.0)
    with pytest.raises(UsageError, match="must be between 0 and 100"):
        export("conv_small", "onnx", tmp_path, eval_data=self_labeled, max_drop=-1.0)
