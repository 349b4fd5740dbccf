"""onnx-int8 end to end on a really trained MNv4: calibration folder in, drop gate out.

The trained digits network (tests/trained_net.py) is written out as image folders, so this
goes through the same path a user's `--calib-data DIR --eval-data DIR2 --max-drop P` takes.
"""
from __future__ import annotations

import json

import pytest

from mnv4_deploy import export
from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import ExportOptions

QUIET = {"log": lambda _: None}
INT8_BOUND = 1.0  # points of top-1 the default recipe may lose on held-out digits


def test_int8_meets_the_accuracy_bound_and_follows_its_plan(trained_digits, digit_folders, tmp_path):
    calib, heldout = digit_folders
    report = export(trained_digits.model, "onnx,onnx-int8", tmp_path, contract=trained_digits.contract,
                    name="digits", calib_data=calib, eval_data=heldout, max_drop=INT8_BOUND, **QUIET)
    fp32, int8 = report.result("onnx"), report.result("onnx-int8")
    assert report.exit_code == 0, [r.failures for r in report.results]
    assert report.evaluation["reference_top1"] > 90.0
    assert int8.accuracy["drop_top1"] <= INT8_BOUND and fp32.accuracy["drop_top1"] == 0.0
    lo, hi = int8.accuracy["drop_top1_ci95"]
    assert lo <= int8.accuracy["drop_top1"] <= hi
    assert int8.emulation_parity["cosine"] > 0.999  # ORT computes what the plan simulates
    assert int8.size_bytes < 0.35 * fp32.size_bytes
    ops = int8.metadata["op_histogram"]
    assert ops.get("QuantizeLinear", 0) > 10 and ops.get("DequantizeLinear", 0) > 10
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["quantization"]["calibration_images"] == len(trained_digits.x_calib)
    assert saved["model"]["calibration"]["sha256"] == saved["quantization"]["calibration_sha256"]
    assert saved["quantization"]["plan"]["counts"]["layers"] > 20


def test_fallback_keeps_sensitive_layers_float_to_meet_a_budget(trained_digits, digit_folders, tmp_path):
    """A harsh recipe (per-tensor weights, activations clipped at the 90th percentile, no
    corrections) misses a 0.5 pt budget; the fallback keeps the most sensitive layers float."""
    calib, heldout = digit_folders
    harsh = tmp_path / "harsh.yaml"
    harsh.write_text("extends: default\nname: harsh\nactivations: {estimator: percentile, percentile: 90.0}\nweights: {per_channel: false}\n"
                     "bias_correction: false\nequalization: false\nfallback: {max_layers: 8}\n"
                     "parity:\n  int8: {min_cosine: 0.0, max_rel_abs: 100.0, min_sqnr_db: -100.0, "
                     "min_top1_agreement: 0.0}\n")
    out = tmp_path / "out"
    report = export(trained_digits.model, "onnx-int8", out, contract=trained_digits.contract, name="digits",
                    calib_data=calib, eval_data=heldout, max_drop=0.5, quant_config=harsh, **QUIET)
    fallback = report.quantization["fallback"]
    assert fallback["initial_drop"] > 0.5, "the harsh recipe should miss the budget on its own"
    # it recovers accuracy layer by layer (meeting a budget is unit-tested in test_quant_fallback)
    assert fallback["kept_float"] and fallback["final_drop"] < fallback["initial_drop"]
    assert report.quantization["sensitivity"]  # the ranking that chose them
    int8 = report.result("onnx-int8")
    assert int8.reason is None and int8.emulation_parity["cosine"] > 0.99
    assert abs(int8.accuracy["drop_top1"] - fallback["final_drop"]) <= 1.0  # ORT agrees with the simulation
    assert (int8.status == "passed") == fallback["met"]
    assert set(fallback["kept_float"]) <= set(int8.metadata["float_layers"])
    summary = report.to_markdown()  # report.md names each layer kept in float and why
    for unit in fallback["kept_float"]:
        assert f"kept in float: {unit} (" in summary and "by sensitivity" in summary


def test_int8_needs_calibration_and_a_new_enough_opset(tmp_path, digit_folders):
    with pytest.raises(UsageError, match="needs calibration images.*--calib-data"):
        export("conv_small", "onnx-int8", tmp_path, **QUIET)
    with pytest.raises(UsageError, match="--opset 13 or newer"):
        export("conv_small", "onnx-int8", tmp_path, calib_data=digit_folders[0], options=ExportOptions(opset=11),
               **QUIET)
