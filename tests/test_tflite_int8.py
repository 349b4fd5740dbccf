"""Full-integer TFLite targets: `tflite-int8` and `edgetpu`, run in the LiteRT interpreter.

Both express the run's one quantization plan (with its logits quantized): judged against the
canonical model (parity.int8), against the plan's fake-quant emulation (parity.emulation) and,
on the trained digits network, against the same accuracy bound as `onnx-int8`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from mnv4_deploy import export
from mnv4_deploy.errors import UsageError
from mnv4_deploy.registry import ExportOptions
from mnv4_deploy.run_lock import TMP_PREFIX

from conftest import SMALL, make_images
from test_int8_pipeline import INT8_BOUND

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")),
    reason="needs mnv4-deploy[tflite]")

QUIET = dict(log=lambda _: None)
FIXTURE_LOG = Path(__file__).parent / "fixtures" / "edgetpu_compiler.log"


def _input_dtype(path: Path) -> np.dtype:
    from mnv4_deploy.converters.tflite import open_interpreter

    return np.dtype(open_interpreter(path).get_input_details()[0]["dtype"])


def _fake_compiler(folder: Path) -> Path:
    """An `edgetpu_compiler` (the real CLI: -s -o OUT_DIR MODEL) that prints a recorded log and
    writes `<stem>_edgetpu.tflite` (a copy of its input)."""
    fake = folder / "edgetpu_compiler"
    folder.mkdir(parents=True, exist_ok=True)
    fake.write_text(f'#!/bin/sh\ncat "{FIXTURE_LOG}"\ncp "$4" "$3/$(basename "$4" .tflite)_edgetpu.tflite"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


@pytest.fixture(scope="module")
def digits_run(trained_digits, digit_folders, tmp_path_factory):
    """onnx-int8, tflite-int8 and edgetpu of the trained digits net in one run (one plan).

    No --max-drop: the drop is gated here, which spares the plan's own simulated-drop pass.
    A fake edgetpu_compiler is on PATH, so the run also keeps a compiled model.
    """
    import torch

    root = tmp_path_factory.mktemp("digits-int8")
    out = root / "out"
    net, (calib, heldout) = trained_digits, digit_folders
    previous, path = torch.get_num_threads(), os.environ["PATH"]
    torch.set_num_threads(1)  # 32x32 tensors: see conftest.one_torch_thread (LiteRT keeps its 2 threads)
    os.environ["PATH"] = f"{_fake_compiler(root / 'bin').parent}{os.pathsep}{path}"
    try:
        report = export(net.model, "onnx-int8,tflite-int8,edgetpu", out, contract=net.contract, name="digits",
                        calib_data=calib, eval_data=heldout, **QUIET)
    finally:
        torch.set_num_threads(previous)
        os.environ["PATH"] = path
    return report, out


def test_trained_int8_tflite_meets_the_onnx_int8_bound_and_follows_the_plan(digits_run):
    report, out = digits_run
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    onnx, tfl, tpu = (report.result(t) for t in ("onnx-int8", "tflite-int8", "edgetpu"))
    assert onnx.accuracy["drop_top1"] <= INT8_BOUND
    for result in (tfl, tpu):
        assert result.accuracy["drop_top1"] <= INT8_BOUND, result.accuracy  # the onnx-int8 bound
        # the interpreter's integer kernels compute what the plan's fake-quant model computes
        assert result.emulation_parity["cosine"] > 0.999 and result.emulation_parity["sqnr_db"] > 30
        assert abs(result.accuracy["top1"] - onnx.accuracy["top1"]) <= 1.0
        ranges = result.metadata["plan_ranges"]
        assert ranges["matched_tensors"] >= 50 and ranges["tensors_on_plan_grid"] >= 50
        assert ranges["tensors_off_plan_grid"] <= 2, ranges["off_plan_grid"]
        assert result.size_bytes < 0.35 * 3.89e6  # int8 weights: a quarter of the fp32 file
    # onnx-int8 is in the run, so the plan has 7-bit GEMM channels (x86 overflow fix): the quantizer's
    # re-derived weights miss them, and every conv/FC gets the plan's integers written over (edgetpu reuses them)
    weights = tfl.metadata["plan_weights"]
    assert weights["weight_tensors_unmatched"] == 0 and weights["weights_rewritten"] > 10, weights
    assert weights["layers_on_plan_weights"] == report.quantization["plan"]["counts"]["layers"], weights
    assert _input_dtype(out / tfl.artifact) == np.float32 and tfl.metadata["io_dtype"] == "float32"
    assert _input_dtype(out / tpu.artifact) == np.uint8 and tpu.metadata["io_dtype"] == "uint8"
    assert "this run's tflite-int8 artifact" in tpu.metadata["full_integer_source"]  # quantized once
    check = tpu.metadata["edgetpu_static_check"]
    assert check["fully_mapped"] and check["first_cpu_op"] is None and check["counts"]["on_cpu"] == 0
    assert "DEQUANTIZE" not in tpu.metadata["op_histogram"] and "DEQUANTIZE" in tfl.metadata["op_histogram"]
    assert report.quantization["calibration_images"] == 256  # one plan for the whole run


@pytest.mark.parametrize("io_dtype", ["int8", "uint8", "float32"])
def test_io_dtype_changes_only_the_boundary(digits_run, trained_digits, tmp_path, io_dtype):
    from mnv4_deploy.converters.tflite import litert_runner
    from mnv4_deploy.converters.tflite.io_types import io_dtype_of, set_io_dtype

    report, out = digits_run
    source = out / report.result("tflite-int8").artifact
    path = tmp_path / f"digits.{io_dtype}.tflite"
    shutil.copyfile(source, path)
    set_io_dtype(path, io_dtype)
    x = trained_digits.x_heldout[:32]
    assert io_dtype_of(path) == io_dtype and _input_dtype(path) == np.dtype(io_dtype)
    reference = litert_runner(source).run(x)
    # integer I/O: the runner quantizes with the input's own scale/zero point -> same logits
    np.testing.assert_allclose(litert_runner(path).run(x), reference, atol=1e-6)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib") / "images"
    make_images(folder, 16)
    return folder


def test_conv_small_int8_io_passes_and_maps_fully_to_the_edgetpu(calib_dir, tmp_path):
    report = export("conv_small", "tflite-int8,edgetpu", tmp_path, img_size=SMALL, golden_count=3,
                    calib_data=calib_dir, options=ExportOptions(io_dtype="int8", strict=True), **QUIET)
    assert report.exit_code == 0, [(r.target, r.failures, r.reason) for r in report.results]
    for name in ("tflite-int8", "edgetpu"):
        result = report.result(name)
        assert result.parity["cosine"] > 0.98 and result.emulation_parity["cosine"] > 0.99
        assert _input_dtype(tmp_path / result.artifact) == np.int8
    check = report.result("edgetpu").metadata["edgetpu_static_check"]
    assert check["fully_mapped"], check["table"]
    assert {row[1] for row in check["rows"]} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"}
    assert "QUANTIZE" not in report.result("edgetpu").metadata["op_histogram"]  # int8 I/O: no boundary ops
    assert report.result("edgetpu").metadata["edgetpu_compiler"]["ran"] is (shutil.which("edgetpu_compiler")
                                                                            is not None)


@pytest.mark.slow  # hybrid_medium: ~2 min of plan + conversion on 2 cores
def test_hybrid_attention_is_flagged_and_strict_names_the_ops(calib_dir, tmp_path):
    from mnv4_deploy.converters.edgetpu import static_check_summary

    report = export("hybrid_medium", "tflite-int8,edgetpu", tmp_path, img_size=SMALL, golden_count=3,
                    calib_data=calib_dir, options=ExportOptions(strict=True), **QUIET)
    tfl, tpu = report.result("tflite-int8"), report.result("edgetpu")
    assert tfl.status == "passed", tfl.failures or tfl.reason
    assert tfl.emulation_parity["cosine"] > 0.99
    assert tpu.status == "export_failed" and tpu.exit_code == 3 and report.exit_code == 3  # as `check --strict`
    assert tpu.reason.startswith("--strict: ops the EdgeTPU cannot run:") and "SOFTMAX" in tpu.reason
    check = static_check_summary(tmp_path / tfl.artifact)  # the same ops, float I/O aside
    assert not check["fully_mapped"] and check["first_cpu_op"]["op"] in ("FULLY_CONNECTED", "BATCH_MATMUL")
    # attention: q.k and attn.v multiply two activations (no constant weights), softmax is 4-D
    assert any("not a compile-time constant" in r or "activation x activation" in r
               for r in check["first_cpu_op"]["reasons"])
    assert "SOFTMAX" in check["unsupported_ops"] and f"{check['first_cpu_op']['op']} x" in tpu.reason
    assert check["counts"]["on_edgetpu"] >= 40  # the conv stem and stages before attention still map


@pytest.mark.slow  # conv_small: ~1.5 min of plan + conversion on a loaded 2-core host
def test_a_strict_compiler_failure_leaves_no_compiled_model_behind(calib_dir, tmp_path, monkeypatch):
    """The compiled model moves with the artifact or not at all: --strict fails after the compiler ran."""
    fake = _fake_compiler(tmp_path / "bin")  # its recorded log leaves 34 ops on the CPU
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    report = export("conv_small", "edgetpu", out, img_size=SMALL, golden_count=3, calib_data=calib_dir,
                    options=ExportOptions(strict=True), **QUIET)
    tpu = report.result("edgetpu")
    assert tpu.status == "export_failed" and tpu.reason.startswith("--strict: edgetpu_compiler left 34 op(s)")
    assert not [p.name for p in out.iterdir() if "edgetpu" in p.name or p.name.startswith(TMP_PREFIX)]


def test_int8_targets_need_calibration_data(tmp_path):
    for target in ("tflite-int8", "edgetpu"):
        with pytest.raises(UsageError, match="needs calibration images.*--calib-data"):
            export("conv_small", target, tmp_path, img_size=SMALL, **QUIET)


def test_converter_refuses_a_job_without_a_plan(tmp_path):
    from mnv4_deploy.converters.edgetpu import EDGETPU
    from mnv4_deploy.converters.tflite import TFLITE_INT8
    from mnv4_deploy.registry import ConvertJob

    job = ConvertJob(model=None, contract=None, example=None, workdir=tmp_path, stem="m", options=ExportOptions(),
                     recipe=None)
    for conv in (TFLITE_INT8, EDGETPU):
        with pytest.raises(UsageError, match="--calib-data"):
            conv.convert(job)


@pytest.mark.parametrize("options, message", [
    (ExportOptions(io_dtype="int16"), "--io-dtype int16 is not supported"),
    (ExportOptions(layout="nchw"), "needs NHWC input"),
])
def test_edgetpu_refuses_options_before_any_work(options, message, tmp_path, calib_dir):
    with pytest.raises(UsageError, match=message):
        export("conv_small", "edgetpu", tmp_path / "out", img_size=SMALL, calib_data=calib_dir, options=options,
               **QUIET)
    assert not (tmp_path / "out").exists()


def test_float_ops_are_named(digits_run):
    """A model with float ops left cannot be full-integer: the check names the first one."""
    from mnv4_deploy.converters.tflite.full_integer import float_ops

    report, out = digits_run
    float_model = out / report.result("tflite-int8").artifact
    assert float_ops(float_model) == []  # full-integer inside; the boundary QUANTIZE/DEQUANTIZE are fine
    from mnv4_deploy.converters.tflite.flatbuffer import NotAFlatbufferError

    bad = out.parent / "not-a-model.tflite"
    bad.write_text("hello")
    with pytest.raises(NotAFlatbufferError, match="not a TFLite flatbuffer"):
        float_ops(bad)


def test_compiler_is_run_when_present_and_its_model_kept(digits_run, tmp_path, monkeypatch):
    from mnv4_deploy.converters.edgetpu import compile_if_available
    from mnv4_deploy.registry import ConvertJob

    report, out = digits_run
    compiled_meta = report.result("edgetpu").metadata["edgetpu_compiler"]
    assert compiled_meta["succeeded"] and compiled_meta["compiled_model"] == "digits_edgetpu.tflite"
    # the export kept it beside the artifact (moved with it), and left no work directory behind
    assert sorted(p.name for p in out.iterdir() if "edgetpu" in p.name) == ["digits.edgetpu.tflite",
                                                                           "digits_edgetpu.tflite"]
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    fake = _fake_compiler(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    workdir = tmp_path / "job" / "work"
    workdir.mkdir(parents=True)
    job = ConvertJob(model=None, contract=None, example=None, workdir=workdir, stem="digits",
                     options=ExportOptions(), recipe=None)
    result, compiled = compile_if_available(out / report.result("edgetpu").artifact, job)
    assert result["succeeded"] and result["compiled_model"] == "digits_edgetpu.tflite"
    # inside the workdir, as the artifact's companion: the pipeline's atomic move puts it beside the artifact
    assert compiled.is_file() and compiled.name == "digits_edgetpu.tflite" and workdir in compiled.parents
    assert [p.name for p in (tmp_path / "job").iterdir()] == ["work"]  # nothing written around the workdir
    assert (result["log"]["ops_on_edgetpu"], result["log"]["ops_on_cpu"]) == (2, 34)
    assert "Mapped to Edge TPU" in result["table"]
