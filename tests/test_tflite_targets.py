"""TFLite/LiteRT float targets: `tflite`, `tflite-fp16`, `tflite-dynamic` (small inputs).

One conversion per model: the fp16 and dynamic-range targets rewrite the run's `tflite`
artifact. `tflite-dynamic` is judged against float and against its recipe's PyTorch
emulation (int8-rounded weights), on the random-init variants and on a really trained MNv4.
"""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

from mnv4_deploy import export
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.registry import ExportOptions

from conftest import SMALL

# find_spec, not importorskip: importing litert_torch at collection would slow every later
# PyTorch test in the session (docs/field-notes.md); the converter imports it only when converting.
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")),
    reason="needs mnv4-deploy[tflite]")

TARGETS = "tflite,tflite-fp16,tflite-dynamic"
QUIET = dict(log=lambda _: None)


def _interpreter_input(path):
    from mnv4_deploy.converters.tflite import open_interpreter

    return open_interpreter(path).get_input_details()[0]


def _int8_weight_cosine(prepared) -> float:
    """Cosine of the canonical model with per-channel symmetric int8 weights (PyTorch, no converter)."""
    import torch

    from mnv4_deploy.validate import compare

    model = copy.deepcopy(prepared.canonical)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight
                scale = (w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127).view(-1, *[1] * (w.dim() - 1))
                w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
        logits = model(torch.from_numpy(prepared.golden.tensors)).numpy()
    return compare(prepared.reference_logits, logits).cosine


def _check_float_targets(report, out, layout: str, size: int):
    fp32, fp16, dyn = (report.result(t) for t in ("tflite", "tflite-fp16", "tflite-dynamic"))
    assert fp32.status == "passed", fp32.failures or fp32.reason
    assert fp32.parity["cosine"] > 0.99999 and fp32.parity["top1_agreement"] == 1.0
    assert fp16.status == "passed", fp16.failures or fp16.reason
    assert fp16.parity["cosine"] > 0.99 and fp16.parity["max_abs"] > fp32.parity["max_abs"]
    assert dyn.parity is not None and dyn.reason is None  # exported and ran; judged below per weights
    # one float conversion shared: both rewrites start from this run's tflite artifact
    assert "this run's tflite artifact" in fp16.metadata["float_source"]
    assert "this run's tflite artifact" in dyn.metadata["float_source"]
    assert fp16.metadata["op_histogram"].get("DEQUANTIZE", 0) > 0  # fp16 weights, float32 compute
    # sizes: fp16 weights about half, int8 weights about a quarter of the fp32 file
    assert 0.45 < fp16.size_bytes / fp32.size_bytes < 0.56
    assert 0.22 < dyn.size_bytes / fp32.size_bytes < 0.32
    expected = [1, size, size, 3] if layout == "nhwc" else [1, 3, size, size]
    for result in (fp32, fp16, dyn):
        detail = _interpreter_input(out / result.artifact)
        assert list(detail["shape"]) == expected and detail["dtype"] == np.float32
        assert result.metadata["layout"] == layout and "strict_export=True" in result.metadata["route"]
        assert result.runtime.startswith("ai-edge-litert") and layout.upper() in result.runtime
    return fp32, fp16, dyn


@pytest.mark.parametrize("name, layout", [("conv_small", "nchw"), ("hybrid_medium", "nhwc")])
def test_random_init_variants_convert_and_pass(name, layout, tmp_path):
    from mnv4_deploy.converters.tflite import read_embedded_contract
    from mnv4_deploy.pipeline import prepare_model

    # the PyTorch-side int8 rounding first, before litert_torch is imported in this process
    weights_only = _int8_weight_cosine(prepare_model(name, img_size=SMALL, golden_count=3, **QUIET))
    report = export(name, TARGETS, tmp_path, img_size=SMALL, golden_count=3, options=ExportOptions(layout=layout),
                    **QUIET)
    fp32, _, dyn = _check_float_targets(report, tmp_path, layout, SMALL)
    if name.startswith("hybrid"):
        assert "SOFTMAX" in fp32.metadata["op_histogram"]  # attention converted, not dropped
    # The dynamic target loses what int8 weights lose on this model, plus on-the-fly
    # activation rounding, and follows its recipe's emulation closely.
    assert abs(dyn.parity["cosine"] - weights_only) < 0.01, (dyn.parity["cosine"], weights_only)
    assert dyn.status == "passed", dyn.failures
    assert dyn.emulation_parity["cosine"] > 0.99 and report.exit_code == 0
    # every artifact carries the contract: the report's contract, the layout, the shape
    for result in report.results:
        embedded = read_embedded_contract(tmp_path / result.artifact)
        assert embedded["preprocess"]["sha256"] == report.contract["sha256"]
        assert Preprocess.from_dict(embedded["preprocess"]).sha256() == report.contract["sha256"]
        assert embedded["input_layout"] == layout.upper() and embedded["target"] == result.target
        assert embedded["input_shape"] == result.metadata["inputs"][0]["shape"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["options"]["layout"] == layout


def test_trained_model_passes_every_target_including_int8_bounds(trained_digits, tmp_path):
    """A really trained MNv4 (conv_small on digits, mean = std = 0.5): dynamic range fits int8."""
    from mnv4_deploy.converters.tflite import read_embedded_contract

    net = trained_digits
    size = net.settings.img_size
    report = export(net.model, TARGETS, tmp_path, contract=net.contract, name="digits", golden_count=8, **QUIET)
    _, _, dyn = _check_float_targets(report, tmp_path, "nhwc", size)
    assert dyn.status == "passed", dyn.failures
    assert dyn.parity["cosine"] > 0.98 and dyn.metadata["quant_recipe"][0]["op_config"]["compute_precision"] == "INTEGER"
    assert report.exit_code == 0
    embedded = read_embedded_contract(tmp_path / report.result("tflite").artifact)
    assert embedded["preprocess"]["mean"] == [0.5, 0.5, 0.5] and embedded["pixel_mean"] == [127.5] * 3
    assert embedded["input_shape"] == [1, size, size, 3]


@pytest.mark.parametrize("options, message", [
    (ExportOptions(layout="NHWC"), "layout 'NHWC' is not supported"),
    (ExportOptions(layout="nhcw"), "layout 'nhcw' is not supported"),
    (ExportOptions(dynamic_batch=True), "fixed batch of 1"),
])
def test_unsupported_options_are_refused_before_any_work(options, message, tmp_path):
    with pytest.raises(UsageError, match=message) as err:
        export("conv_small", "tflite", tmp_path / "out", img_size=SMALL, options=options, **QUIET)
    assert err.value.exit_code == 2 and not (tmp_path / "out").exists()


def test_integer_io_is_quantized_with_the_tensor_scale():
    """The runner's I/O conversion, as the full-integer targets will use it."""
    from mnv4_deploy.converters.tflite.runtime import _from_output, _to_input

    detail = {"name": "x", "dtype": np.int8, "quantization": (0.5, -3)}
    q = _to_input(np.array([-100.0, -1.0, 0.0, 0.26, 100.0], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -5, -3, -2, 127]  # clipped at both ends
    assert _from_output(np.array([-3, 7], np.int8), detail).tolist() == [0.0, 5.0]
    uint8 = {"name": "y", "dtype": np.uint8, "quantization": (0.1, 128)}
    assert _to_input(np.array([-20.0, 0.0, 1.0], np.float32), uint8).tolist() == [0, 128, 138]
    assert _to_input(np.zeros(2, np.float32), {"name": "f", "dtype": np.float32, "quantization": (0.0, 0)}).dtype \
        == np.float32
