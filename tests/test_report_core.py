"""The reporting core: one exit-code precedence, one SHA256SUMS writer, one version and
reproducibility home, typed extra judged rows, upstream targets built first, and `--strict`
giving the same exit code from `export` and `check`."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SMALL

from mnv4_deploy.checksums import SUMS_FILE, files_of, sha256sums
from mnv4_deploy.errors import EXIT_OK, EXIT_PARITY, EXIT_USAGE, OpsOffAccelerator
from mnv4_deploy.judgement import Judgement
from mnv4_deploy.provenance import BYTE_IDENTICAL, NOT_INSTALLED, byte_identical, package_versions, tool_versions
from mnv4_deploy.registry import build_order
from mnv4_deploy.report import PASSED, Report, TargetResult, worst_exit_code


def _report(tmp_path: Path, *results: TargetResult) -> Report:
    report = Report(model={"name": "m"}, contract={}, canonical={}, golden={}, options={}, recipe={},
                    out_dir=str(tmp_path))
    report.results = list(results)
    return report


# ---- exit codes ---------------------------------------------------------------------------
@pytest.mark.parametrize("codes, expected", [
    ([], EXIT_OK), ([0, 0], EXIT_OK), ([0, 4, 3], 3), ([3, 5], 5), ([5, 1, 3], 1), ([2, 0], 2), ([4, 2], 4),
])
def test_one_exit_precedence_for_a_report_and_a_matrix(tmp_path, codes, expected):
    """Export failure, then missing backend, then parity, then accuracy; else the highest."""
    assert worst_exit_code(codes) == expected
    report = _report(tmp_path, *(TargetResult(f"t{i}", "fp32", PASSED, exit_code=c) for i, c in enumerate(codes)))
    assert report.exit_code == expected


def test_strict_is_exit_3_from_export_and_check():
    """`--strict` refusing an op is a verdict on the model, like parity (3), not bad input (2)."""
    from mnv4_deploy.converters.bpu.march import OffBpuNode, OpCheck
    from mnv4_deploy.converters.bpu.onnx_model import enforce_op_policy

    assert OpsOffAccelerator.exit_code == EXIT_PARITY == 3 and EXIT_PARITY != EXIT_USAGE
    check = OpCheck("bernoulli2", 11, (11,), 7, 7, (OffBpuNode("attn/Softmax", "Softmax", "cpu", ""),))
    assert enforce_op_policy(check, strict=False, log=lambda _: None)  # reported, not refused
    with pytest.raises(OpsOffAccelerator, match=r"--strict: 1 node\(s\) would run on the CPU on bernoulli2"):
        enforce_op_policy(check, strict=True, log=lambda _: None)


# ---- extra judged rows ----------------------------------------------------------------------
INT8 = Judgement("int8", "emulated int8 (bpu recipe)", {"cosine": 0.991234, "max_abs": 0.25, "sqnr_db": 18.5,
                                                        "top1_agreement": 0.875}, None,
                 ("cosine 0.991234 < 0.995",), images=8, on="calibration")


def test_extra_judgements_are_rows_under_their_target_and_survive_report_json(tmp_path):
    bundle = TargetResult("bpu-x5", "fp32", PASSED, parity={"cosine": 1.0, "max_abs": 1e-6, "sqnr_db": 90.0,
                                                             "top1_agreement": 1.0},
                          extra_judgements=[INT8])
    stray = TargetResult("onnx", "fp32", PASSED, metadata={"emulated": [{"name": "x", "parity": {}}]})
    report = _report(tmp_path, bundle, stray)
    rows = report.table_rows()
    assert [r[0] for r in rows[1:]] == ["bpu-x5", "bpu-x5 [int8]", "onnx"]  # metadata is not interpreted
    extra = rows[2]
    assert extra[1] == "emulated here" and extra[3] == "0.991234" and extra[5] == "18.5"
    assert extra[-1] == "emulated int8 (bpu recipe); cosine 0.991234 < 0.995"
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.results[0].extra_judgements == [INT8] and again.results[1].extra_judgements == []
    assert again.format_table() == report.format_table()


# ---- what parity was judged on -------------------------------------------------------------
def _report_json(golden: dict) -> dict:
    """A report.json dict as an int8 export with --calib-data writes it (no results needed)."""
    return {"model": {"name": "conv_small", "timm_name": "mobilenetv4_conv_small.e2400_r224_in1k",
                      "weights": "random init, seed 0",
                      "calibration": {"source": "photos", "count": 32, "sha256": "f4dee571fe3c3467bd" + "0" * 46}},
            "contract": {"crop_size": [64, 64], "resize_short": 73, "interpolation": "bicubic",
                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "canonical": {"norms_folded": 46}, "golden": golden, "options": {}, "recipe": {}, "out_dir": "out",
            "results": []}


@pytest.mark.parametrize("golden, line", [
    ({"source": "photos", "count": 8, "sha256": "ab", "held_out_of": "calibration"},
     "golden inputs: 8 images of photos, held out of the calibration sample"),
    ({"source": "photos", "count": 8, "sha256": "ab"}, "golden inputs: 8 photos images"),  # --data photos
    ({"source": "synthetic", "count": 8, "sha256": "ab", "note": "synthetic: --calib-data photos has no readable "
      "images beyond the calibration sample"},
     "golden inputs: 8 synthetic images (synthetic: --calib-data photos has no readable images beyond the "
     "calibration sample)"),
])
def test_report_md_says_where_the_parity_inputs_came_from(golden, line):
    """Held out of the calibration sample, a --data folder, or a synthetic fallback and why."""
    markdown = Report.from_dict(_report_json(golden)).to_markdown()
    assert f"- {line}\n" in markdown
    assert ("held out" in markdown) == ("held_out_of" in golden)
    assert "- calibration: 32 images from photos (sha256 f4dee571fe3c3467)" in markdown


def test_bpu_forecasts_become_typed_judgements():
    from mnv4_deploy.converters.bpu.target import forecast_judgements

    rows = [{"name": "nv12", "label": "float, NV12 BT.601 input", "images": 8, "on": "calibration",
             "parity": {"cosine": 0.9999}, "accuracy": None},
            {"name": "int8", "label": "emulated int8 (bpu recipe)", "images": 8, "on": "calibration",
             "parity": {"cosine": 0.99}, "accuracy": None, "int8_bound_failures": ["cosine 0.99 < 0.995"]}]
    nv12, int8 = forecast_judgements(rows)
    assert (nv12.name, nv12.notes, nv12.parity) == ("nv12", (), {"cosine": 0.9999})
    assert int8.notes == ("cosine 0.99 < 0.995",) and int8.note() == "emulated int8 (bpu recipe); cosine 0.99 < 0.995"


# ---- SHA256SUMS -----------------------------------------------------------------------------
def _tree(root: Path) -> None:
    (root / "m.onnx").write_bytes(b"onnx bytes")
    pkg = root / "m.mlpackage" / "Data" / "weights"
    pkg.mkdir(parents=True)
    (pkg / "weight.bin").write_bytes(b"\x00\x01" * 100)
    (root / "m.mlpackage" / "Manifest.json").write_text("{}")
    (root / "m.mlpackage" / "Data-extra.txt").write_text("sorts after Data/ by path text")


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum (coreutils) not on PATH")
def test_one_sha256sums_writer_for_reports_and_bundles(tmp_path):
    from mnv4_deploy.converters.bpu.bundle import write_sums

    _tree(tmp_path)
    report = _report(tmp_path, TargetResult("onnx", "fp32", PASSED, artifact="m.onnx"),
                     TargetResult("coreml", "fp16", PASSED, artifact="m.mlpackage"),
                     TargetResult("tflite", "fp32", "export_failed", artifact=None))
    report.write(tmp_path)
    lines = (tmp_path / SUMS_FILE).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "m.onnx", "m.mlpackage/Data-extra.txt", "m.mlpackage/Data/weights/weight.bin", "m.mlpackage/Manifest.json"]
    assert subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=tmp_path, capture_output=True).returncode == 0

    bundle = tmp_path / "m.mlpackage"
    write_sums(bundle)
    text = (bundle / SUMS_FILE).read_text()
    assert text == sha256sums(files_of(bundle, skip={SUMS_FILE}), bundle) and SUMS_FILE not in text
    assert subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=bundle, capture_output=True).returncode == 0
    (bundle / "Manifest.json").write_text('{"changed": 1}')
    assert subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=bundle, capture_output=True).returncode != 0


# ---- versions and reproducibility -------------------------------------------------------------
def test_versions_and_reproducibility_have_one_home():
    import numpy as np

    from mnv4_deploy.converters.executorch import REPRODUCIBLE as EXECUTORCH
    from mnv4_deploy.converters.onnx import REPRODUCIBLE as ONNX
    from mnv4_deploy.converters.openvino import REPRODUCIBLE as OPENVINO
    from mnv4_deploy.converters.tflite.common import REPRODUCIBLE as TFLITE
    from mnv4_deploy.converters.tflite.common import tool_versions as tflite_versions

    assert tool_versions(["numpy", "no-such-package-xyz"]) == {"numpy": np.__version__,
                                                                 "no-such-package-xyz": NOT_INSTALLED}
    assert tool_versions(["no-such-package-xyz"], missing=None) == {}
    assert package_versions()["numpy"] == np.__version__ and "no-such-package-xyz" not in package_versions()
    assert set(tflite_versions()) == {"torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer"}
    for declared in (ONNX, TFLITE, EXECUTORCH, OPENVINO):
        assert declared["reproducible"] is True and declared["reproducible_reason"].startswith(BYTE_IDENTICAL + ": ")
    assert byte_identical("why") == {"reproducible": True, "reproducible_reason": f"{BYTE_IDENTICAL}: why"}
    assert TargetResult("x", "fp32", PASSED).reproducibility() == {"reproducible": None,
                                                                   "reason": "not declared by the converter"}


# ---- upstream targets first ---------------------------------------------------------------------
def test_build_order_puts_upstream_targets_first_and_keeps_the_rest_in_order():
    assert build_order(["tflite-fp16", "onnx", "tflite"]) == ["tflite", "tflite-fp16", "onnx"]
    assert build_order(["edgetpu", "onnx-int8", "tflite-int8"]) == ["tflite-int8", "edgetpu", "onnx-int8"]
    assert build_order(["coreml-w8", "onnx"]) == ["coreml-w8", "onnx"]  # upstream not asked for: order kept
    assert build_order(["onnx", "tflite", "tflite-dynamic"]) == ["onnx", "tflite", "tflite-dynamic"]


@pytest.mark.slow  # two TFLite conversions of conv_small at 64 px: ~40 s on the loaded 2-core machine
def test_tflite_fp16_before_tflite_converts_the_float_model_once(tmp_path, monkeypatch):
    import mnv4_deploy.converters.tflite as tflite_targets
    from mnv4_deploy import export

    calls: list[Path] = []
    real = tflite_targets.export_float_tflite

    def counting(*args, **kwargs):
        calls.append(Path(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tflite_targets, "export_float_tflite", counting)
    report = export("conv_small", "tflite-fp16,tflite", tmp_path, img_size=SMALL, golden_count=3, log=lambda _: None)
    assert report.exit_code == EXIT_OK, [(r.target, r.reason, r.failures) for r in report.results]
    assert [r.target for r in report.results] == ["tflite-fp16", "tflite"]  # the user's order of rows
    assert [p.name for p in calls] == ["conv_small.tflite"]  # one float conversion: the tflite artifact's
    assert report.result("tflite-fp16").metadata["float_source"] == "this run's tflite artifact conv_small.tflite"
    assert json.loads((tmp_path / "report.json").read_text())["exit_code"] == EXIT_OK
