"""OpenVINO targets: `openvino` (IR, fp32 compute) and `openvino-int8` (the run's plan as QDQ), on the CPU plugin.

The int8 IR is the plan's QDQ ONNX read by OpenVINO: judged against the canonical model
(parity.int8), against the plan's fake-quant emulation (parity.emulation) and, on the trained
digits network, against the same accuracy bound as `onnx-int8`.
"""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mnv4_deploy import export
from mnv4_deploy.cli import app
from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import ExportOptions

from conftest import SMALL
from target_checks import QUIET, check_digits_fp32_and_int8, check_missing_backend_names_the_extra, \
    check_rejudged_and_other_model_refused, digits_run_fixture, inspect_digits_artifact

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("openvino", "onnx", "onnxsim")),
                                reason="needs mnv4-deploy[openvino] (pip install 'mnv4-deploy[openvino]')")

cli = CliRunner()


# openvino, openvino-int8 and onnx-int8 of the trained digits net in one run (one plan).
digits_run = digits_run_fixture("openvino,openvino-int8,onnx-int8")


def test_fp32_and_int8_pass_and_int8_keeps_the_onnx_int8_accuracy_bound(digits_run):
    report, out = digits_run
    fp32, int8 = check_digits_fp32_and_int8(report, "openvino", "openvino-int8")
    onnx = report.result("onnx-int8")
    assert abs(int8.accuracy["top1"] - onnx.accuracy["top1"]) <= 1.0
    # OpenVINO's int8 path computes what the plan's fake-quant model computes (within its own rounding)
    assert int8.emulation_parity["cosine"] > 0.99 and int8.emulation_parity["sqnr_db"] > 20, int8.emulation_parity
    assert int8.metadata["fake_quantize_ops"] >= 50  # one per plan point
    assert int8.metadata["constant_types"].get("i8", 0) >= 40  # int8 weights stored as i8
    assert "FakeQuantize" not in fp32.metadata["op_histogram"]
    assert (out / "digits.openvino" / "digits.xml").is_file() and (out / "digits.openvino" / "digits.bin").is_file()


def test_x86_int8_targets_get_the_overflow_fix_and_a_no_vnni_cross_check(digits_run):
    """openvino-int8 runs x86 int8 kernels: the plan is fixed by default, and on a VNNI host the IR is also run
    with oneDNN capped at AVX2, which must then follow the plan as closely as the judged runtime."""
    from mnv4_deploy.converters.openvino.ir import can_cap_to_no_vnni

    report, _ = digits_run
    overflow = report.quantization["plan"]["overflow"]
    assert overflow["mode"] == "auto" and overflow["seven_bit_channels"] > 0 and not overflow["layers_at_risk"]
    int8 = report.result("openvino-int8")
    assert int8.metadata["overflow_fix"] == "auto" and "notes" not in int8.metadata
    assert report.result("onnx-int8").metadata["weight_dtype"] == "int8"  # exact on every CPU: no uint8 fallback
    runtimes = [c["runtime"] for c in int8.metadata["cross_checks"]]
    capped = [c for c in int8.metadata["cross_checks"] if "capped at AVX2" in c["runtime"]]
    assert len(capped) == (1 if can_cap_to_no_vnni() else 0), runtimes
    for check in capped:
        assert not check["vs_emulation_failures"] and check["vs_emulation"]["cosine"] > 0.99, check
    assert "openvino" not in {c["runtime"] for c in report.result("openvino").metadata.get("cross_checks", [])
                              if "capped" in c["runtime"]}  # fp32 IRs have no int16 pair sums to check


def test_the_ir_carries_contract_classes_and_plan_hash(digits_run, trained_digits):
    report, out = digits_run
    meta = inspect_digits_artifact(out / "digits.int8.openvino", "openvino-int8", "openvino-ir")
    assert meta["preprocess"]["std"] == list(trained_digits.contract.std)
    assert meta["int8_plan_sha256"] == report.result("openvino-int8").metadata["embedded"]["int8_plan_sha256"]
    # the .xml itself is accepted too (its .bin beside it)
    direct = cli.invoke(app, ["inspect", str(out / "digits.openvino" / "digits.xml"), "--target", "openvino"])
    assert direct.exit_code == 0 and json.loads(direct.stdout)["metadata"]["target"] == "openvino"


def test_validate_rejudges_the_ir_and_names_another_model(digits_run, trained_digits):
    _, out = digits_run
    check_rejudged_and_other_model_refused(out / "digits.openvino", "openvino", out / "digits.int8.openvino",
                                           trained_digits)


def test_corrupt_or_incomplete_irs_are_refused_in_one_line(digits_run, tmp_path):
    _, out = digits_run
    cut = tmp_path / "cut.openvino"
    shutil.copytree(out / "digits.openvino", cut)
    xml = cut / "digits.xml"
    xml.write_text(xml.read_text()[:3000])
    no_bin = tmp_path / "nobin.openvino"
    shutil.copytree(out / "digits.openvino", no_bin)
    (no_bin / "digits.bin").unlink()
    swapped = tmp_path / "swapped.openvino"  # the .bin of another model
    shutil.copytree(out / "digits.openvino", swapped)
    shutil.copyfile(out / "digits.int8.openvino" / "digits.bin", swapped / "digits.bin")
    for path, message in ((cut, "not a readable OpenVINO IR"), (no_bin, "its weights file digits.bin is missing"),
                          (swapped, "not a readable OpenVINO IR")):
        result = cli.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and message in result.stderr, (path.name, result.output)
        assert len(result.stderr.strip().splitlines()) == 1


def test_fp16_weights_are_stored_in_fp16_and_judged_as_fp16(tmp_path):
    report = export("conv_small", "openvino", tmp_path, img_size=SMALL, golden_count=3,
                    options=ExportOptions(openvino_fp16_weights=True), **QUIET)
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    result = report.result("openvino")
    assert result.precision == "fp16" and result.metadata["fp16_weights"]
    assert result.metadata["constant_types"].get("f16", 0) >= 40
    # against the model with fp16-rounded weights, the IR is exact to fp32 bounds
    assert result.emulation_parity["sqnr_db"] > 60 and result.parity["sqnr_db"] > 40
    from mnv4_deploy.pipeline import validate_artifact

    again = validate_artifact(tmp_path / "conv_small.openvino", "conv_small", img_size=SMALL, golden_count=3, **QUIET)
    assert again.results[0].precision == "fp16" and again.exit_code == 0  # the IR says what it is


def test_the_fp16_option_is_refused_without_an_openvino_target():
    from mnv4_deploy.pipeline import resolve_converters

    with pytest.raises(UsageError, match="option --openvino-fp16-weights is not used by target"):
        resolve_converters("onnx", ExportOptions(openvino_fp16_weights=True))


def test_ir_bytes_are_reproducible(tmp_path):
    first = export("conv_small", "openvino", tmp_path / "a", img_size=SMALL, golden_count=2, **QUIET)
    second = export("conv_small", "openvino", tmp_path / "b", img_size=SMALL, golden_count=2, **QUIET)
    assert first.result("openvino").sha256 == second.result("openvino").sha256
    assert "DIR" not in (tmp_path / "a" / "conv_small.openvino" / "conv_small.xml").read_text()  # no temp path


def test_missing_backend_names_the_extra(monkeypatch):
    from mnv4_deploy.converters.openvino import OPENVINO_FP32

    check_missing_backend_names_the_extra(monkeypatch, OPENVINO_FP32, "openvino", "openvino")


def test_runner_takes_any_batch_size(digits_run, trained_digits):
    from mnv4_deploy.converters.openvino.ir import ir_runner

    _, out = digits_run
    run = ir_runner(out / "digits.openvino").run
    x = trained_digits.x_heldout[:5]
    np.testing.assert_allclose(run(x), np.concatenate([run(x[i:i + 1]) for i in range(5)]), rtol=1e-5, atol=1e-5)
