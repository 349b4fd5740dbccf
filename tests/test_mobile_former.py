"""Mobile-Former (tests/mobile_former.py), a user's own `nn.Module`, end to end through the Python API.

Trained on scikit-learn digits like the MNv4 test net, then exported with
`mnv4_deploy.export(module, ..., contract=..., calib_data=..., eval_data=...)`. What it adds
to the engine: `nn.MultiheadAttention` (decomposed by canonicalization), LayerNorm (kept, not
folded), elementwise max and token-conditioned affines (Dynamic ReLU), activation x activation
matmuls without projections (the Mobile<->Former bridges).

Default tier: the model and its canonical form, onnx + onnx-int8 with the accuracy gate, tflite
and coreml float parity, and the BPU marches' CPU fallbacks on the bundle's opset-11 ONNX.
Slow tier: tflite-int8, edgetpu, coreml-int8, bpu-x5 and bpu-x3 from one plan, and the fp16,
fp32 and weight-only forms (onnx-fp16, tflite-fp16, coreml-fp32, coreml-w8).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from mnv4_deploy import export
from mnv4_deploy.attention import ExplicitMultiheadAttention, decompose_multihead_attention
from mnv4_deploy.canonicalize import canonicalize
from mnv4_deploy.errors import UsageError

from test_int8_pipeline import INT8_BOUND

QUIET = {"log": lambda _: None}
CALIB_SIZE = 64  # the plan of this net: ~25 s on 64 images, ~60 s on all 256


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_tflite = pytest.mark.skipif(not _has("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
                                  reason="needs mnv4-deploy[tflite]")
needs_coreml = pytest.mark.skipif(not _has("coremltools"), reason="needs mnv4-deploy[coreml]")


@pytest.fixture(scope="module")
def mobile_former():
    """`TrainedDigits` holding the trained Mobile-Former (cached under .pytest_cache/mnv4-trained)."""
    from mobile_former import load_trained_mobile_former

    return load_trained_mobile_former(log=lambda _: None)


@pytest.fixture(scope="module")
def folders(mobile_former, tmp_path_factory):
    """(calibration folder, labeled held-out folder) as a user's --calib-data / --eval-data."""
    from trained_net import write_digit_images

    root = tmp_path_factory.mktemp("mobile-former-digits")
    write_digit_images(root / "calib", mobile_former.x_calib, mobile_former.contract)
    write_digit_images(root / "eval", mobile_former.x_heldout, mobile_former.contract, mobile_former.y_heldout)
    return root / "calib", root / "eval"


def _export(net, targets: str, out, folders=None, **kwargs):
    """One export on one torch thread (32x32 tensors: see conftest.one_torch_thread)."""
    extra = {} if folders is None else {"calib_data": folders[0], "eval_data": folders[1], "calib_size": CALIB_SIZE}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export(net.model, targets, out, contract=net.contract, name="mobile-former", golden_count=4,
                      **extra, **kwargs, **QUIET)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def onnx_run(mobile_former, folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("mf-onnx") / "out"
    # tflite-int8 beside onnx-int8: the run's plan gets 7-bit channels (--overflow-fix auto), which tflite-int8
    # writes over the quantizer's weights (converters/tflite/plan_weights.py)
    return _export(mobile_former, "onnx,onnx-int8,tflite-int8", out, folders), out


@pytest.fixture(scope="module")
def float_run(mobile_former, tmp_path_factory):
    out = tmp_path_factory.mktemp("mf-float") / "out"
    return _export(mobile_former, "tflite,tflite-dynamic,coreml", out), out


@pytest.fixture(scope="module")
def int8_run(mobile_former, folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("mf-int8") / "out"
    return _export(mobile_former, "tflite-int8,edgetpu,coreml-int8,bpu-x5,bpu-x3,onnx-fp16,tflite-fp16,coreml-fp32,"
                   "coreml-w8", out, folders), out


# ---- the model, and what canonicalization does with it ----


def test_mobile_former_trains_to_a_useful_accuracy(mobile_former):
    from mobile_former import count_parameters

    assert mobile_former.float_top1 > 95.0, mobile_former.float_top1
    assert count_parameters(mobile_former.model) < 400_000  # small enough for 32 px digits
    kinds = {type(m).__name__ for m in mobile_former.model.modules()}
    assert {"MultiheadAttention", "LayerNorm", "DynamicReLU", "MobileToFormer", "FormerToMobile"} <= kinds
    assert mobile_former.model.tokens.shape[1] == 6


def test_canonical_form_decomposes_attention_and_keeps_layer_norms(mobile_former):
    model = mobile_former.model
    x = torch.from_numpy(mobile_former.x_heldout[:8])
    canonical, stats = canonicalize(model, x[:2])
    assert stats.multihead_attention_decomposed == 4 and stats.norms_folded == 14  # every BN follows a conv
    assert not any(isinstance(m, (nn.MultiheadAttention, nn.BatchNorm2d)) for m in canonical.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in canonical.modules()) == 8  # post-LNs are not folded
    assert any(isinstance(m, nn.MultiheadAttention) for m in model.modules())  # the user's model is untouched
    with torch.no_grad():
        np.testing.assert_allclose(canonical(x).numpy(), model(x).numpy(), rtol=0, atol=1e-4)


def test_a_module_without_batch_norm_canonicalizes_as_is():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 3, 2, 2)
    canonical, stats = canonicalize(model, x)
    assert stats.norms_folded == 0 and stats.multihead_attention_decomposed == 0 and stats.norms_left == []
    assert isinstance(canonical[2], nn.LayerNorm)
    with torch.no_grad():
        assert torch.equal(canonical(x), model(x))


@pytest.mark.parametrize("batch_first", [True, False])
def test_explicit_attention_computes_what_multihead_attention_computes(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    explicit = ExplicitMultiheadAttention(mha).eval()
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    with torch.no_grad():
        want, want_weights = mha(q, kv, kv)
        got, got_weights = explicit(q, kv, kv)
        alone, none = explicit(q, kv, kv, need_weights=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_weights, want_weights, rtol=1e-5, atol=1e-6)
    assert none is None and torch.equal(alone, got)
    with pytest.raises(UsageError, match="mask"):
        explicit(q, kv, kv, attn_mask=torch.zeros(5, 7, dtype=torch.bool))


def test_explicit_attention_keeps_separate_key_and_value_widths():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, kdim=16, vdim=24, batch_first=True).eval()
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 7, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        torch.testing.assert_close(ExplicitMultiheadAttention(mha)(q, k, v)[0], mha(q, k, v)[0], rtol=1e-5, atol=1e-5)


def test_attention_without_an_explicit_form_is_refused_by_name():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(UsageError, match="0: nn.MultiheadAttention with add_bias_kv"):
        decompose_multihead_attention(model)


def test_a_dead_relu_gets_a_grid_runtimes_accept():
    """All-zero on the calibration set (a Dynamic ReLU's MLP unit can be): zero stays exact, and
    the scale is not the 1e-8 floor that made XNNPACK abort while preparing the next layer."""
    from mnv4_deploy.quant.qparams import qparams_for_range

    for dtype in ("uint8", "int8"):
        q = qparams_for_range(0.0, 0.0, dtype=dtype)
        assert q.fake_quantize(np.zeros(3))[0] == 0.0 and q.scale == pytest.approx(1 / 255)
        assert q.lo == 0.0 and q.hi == pytest.approx(1.0)
    assert qparams_for_range(0.0, 1e-3).scale == pytest.approx(1e-3 / 255)  # a real range keeps its grid


def test_relu_after_a_folded_batch_norm_shares_the_conv_output_grid():
    """conv -> BN -> ReLU written as nn.Sequential: the folded BN leaves an Identity, and the
    ReLU still fuses into the conv's output quantizer, as the runtimes fuse it."""
    from mnv4_deploy.quant.graph import build_quant_graph

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    canonical, stats = canonicalize(model, x)
    assert stats.norms_folded == 1 and isinstance(canonical[1], nn.Identity)
    qg = build_quant_graph(canonical, x[:1])
    assert [u.kind for u in qg.units.values()] == ["input", "layer"]
    conv = qg.units["0"]
    assert conv.act is not None and qg.points[conv.point].anchor == conv.act


# ---- float and int8 targets ----


def test_onnx_and_onnx_int8_pass_and_int8_keeps_its_accuracy(onnx_run, mobile_former):
    report, _ = onnx_run
    fp32, int8 = report.result("onnx"), report.result("onnx-int8")
    assert report.exit_code == 0, [(r.target, r.reason, r.failures) for r in report.results]
    assert fp32.parity["cosine"] > 0.99999 and fp32.accuracy["drop_top1"] == 0.0
    assert report.evaluation["reference_top1"] == pytest.approx(mobile_former.float_top1, abs=0.2)
    assert int8.accuracy["drop_top1"] <= INT8_BOUND, int8.accuracy
    assert int8.emulation_parity["cosine"] > 0.999  # onnxruntime computes what the plan simulates
    ops = int8.metadata["op_histogram"]
    # attention, LayerNorm and Dynamic ReLU's max survive as themselves between Q/DQ pairs
    for op in ("MatMul", "Softmax", "LayerNormalization", "Max"):
        assert ops.get(op, 0) >= 4, (op, ops)
    plan = report.quantization["plan"]
    assert plan["counts"]["layers"] >= 56  # every Linear, the attention's q/k/v/out projections too


@needs_tflite
def test_tflite_int8_of_a_plan_with_7_bit_channels_keeps_the_constants_litert_folded_into_biases(onnx_run):
    """LiteRT folds Dynamic ReLU's hard-sigmoid +3 into the bias of the FULLY_CONNECTED before its ReLU6. Writing
    the plan's own weights and biases over the quantizer's must keep that constant: without it the coefficients
    collapse and the model falls to cosine 0.44 (top-1 9.8%) while the plan's emulation stays at 0.999."""
    report, _ = onnx_run
    result = report.result("tflite-int8")
    assert report.quantization["plan"]["overflow"]["seven_bit_channels"] > 0
    assert result.metadata["plan_weights"]["weights_rewritten"] > 0, result.metadata["plan_weights"]
    assert result.status == "passed", (result.reason, result.failures)
    assert result.emulation_parity["cosine"] > 0.999, result.emulation_parity
    assert result.accuracy["drop_top1"] <= INT8_BOUND, result.accuracy


@needs_tflite
@needs_coreml
def test_float_tflite_and_coreml_pass_parity(float_run):
    report, _ = float_run
    assert report.exit_code == 0, [(r.target, r.reason, r.failures) for r in report.results]
    assert report.result("tflite").parity["cosine"] > 0.99999
    # the first bridge's query is computed from the learned tokens alone, so the converter folds it
    # into a constant left operand of BATCH_MATMUL: the dynamic recipe must leave that op float
    assert report.result("tflite-dynamic").parity["cosine"] > 0.99
    assert report.result("coreml").parity["sqnr_db"] > 40.0  # fp16 compute


def test_bpu_marches_name_the_cpu_fallbacks(mobile_former, tmp_path):
    """The bundle's opset-11 ONNX against each march's op list: attention and LayerNorm leave the BPU."""
    from mnv4_deploy.converters.bpu.march import check_onnx_ops, get_march
    from mnv4_deploy.converters.bpu.onnx_model import OFF_BPU_FATAL, export_bpu_onnx

    canonical, _ = canonicalize(mobile_former.model, torch.from_numpy(mobile_former.x_calib[:2]))
    path = tmp_path / "mobile-former.onnx"
    export_bpu_onnx(canonical, torch.from_numpy(mobile_former.x_calib[:1]), path, 11, True, get_march("bernoulli2"))
    x3, x5 = check_onnx_ops(path, "bernoulli2"), check_onnx_ops(path, "bayes-e")
    for check in (x3, x5):  # CPU fallbacks only: nothing the toolchain refuses (no contrib-domain ops)
        assert check.opset_ok and not [n for n in check.off_bpu if n.kind in OFF_BPU_FATAL], check.problems()[:3]
    # X3: attention's reshapes/transposes and activation x activation matmuls, LayerNorm's Sub,
    # Dynamic ReLU's Max and its coefficient indexing (Gather) run on the CPU
    assert {"Softmax", "MatMul", "Transpose", "Reshape", "Sub", "Max", "Gather"} <= set(x3.off_bpu_op_types)
    # X5 runs all of that on the BPU except softmax (CPU unless forced): 4 blocks x 3 attentions
    assert x5.off_bpu_op_types == ["Softmax"]
    assert len(x5.off_bpu) == 12 and all(n.kind == "conditional" for n in x5.off_bpu)


@pytest.mark.slow  # ~6 min: the TFLite, Core ML and BPU conversions (one plan), 594 held-out images each
@needs_tflite
@needs_coreml
def test_int8_edgetpu_bpu_and_fp16_targets(int8_run):
    report, _ = int8_run
    for target in ("tflite-int8", "edgetpu", "coreml-int8", "bpu-x5", "bpu-x3", "onnx-fp16", "tflite-fp16",
                   "coreml-fp32", "coreml-w8"):
        result = report.result(target)
        assert result.status == "passed", (target, result.reason, result.failures)
        assert result.accuracy["drop_top1"] <= INT8_BOUND, (target, result.accuracy)
    for target in ("tflite-int8", "edgetpu", "coreml-int8"):
        assert report.result(target).emulation_parity is not None
    check = report.result("edgetpu").metadata["edgetpu_static_check"]
    # the stem maps; the first bridge's q.k (two activations) is the first CPU op
    assert not check["fully_mapped"] and check["first_cpu_op"]["op"] == "BATCH_MATMUL", check["first_cpu_op"]
    assert "activation x activation" in check["first_cpu_op"]["reasons"][0]
    blocking = check["unsupported_ops"]  # ops that cannot map on their own
    assert blocking["BATCH_MATMUL"] == 24 and blocking["SOFTMAX"] == 12  # 4 blocks x 3 attentions x (q.k, attn.v)
    assert blocking["MEAN"] >= 16 and blocking["GELU"] == 4  # LayerNorm's means (2 per LN), the FFN's GELU
    assert "FULLY_CONNECTED" in blocking  # projections of the 6 x 64 token matrix (2-D outputs)
    assert {"SQUARED_DIFFERENCE", "RSQRT", "MAXIMUM"} <= set(check["ops_on_cpu"])  # LayerNorm, Dynamic ReLU
    for target, march_cpu in (("bpu-x3", {"Softmax", "MatMul", "Sub", "Max"}), ("bpu-x5", {"Softmax"})):
        off_bpu = report.result(target).metadata["op_check"]["off_bpu"]  # "node (OpType): kind"
        op_types = {line.split(" (")[-1].split(")")[0] for line in off_bpu}
        assert march_cpu <= op_types, (target, sorted(op_types))
