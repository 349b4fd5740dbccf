"""Hybrid MNv4 (attention): quantizers on matmul/softmax, and onnxruntime runs them int8.

Structure only: there is no trained hybrid here, and random-init attention says nothing
about accuracy (docs/field-notes.md), so this checks placement, export and fusion, plus parity with
onnxruntime's reference (unfused) execution of the same QDQ graph.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from mnv4_deploy.canonicalize import canonicalize
from mnv4_deploy.models import build, open_layer_scales, recalibrate_batchnorm, resolve
from mnv4_deploy.quant import build_plan
from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx, ort_session, run_session
from mnv4_deploy.quant.threads import single_thread
from mnv4_deploy.validate import compare

RECIPE = {"calibration": {"size": 8, "batch_size": 8, "correction_size": 8},
          "weights": {"bits": 8}, "activations": {"estimator": "minmax"},
          "equalization": True, "bias_correction": False, "parity": {}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: small tensors, shared VM


@pytest.fixture(scope="module")
def hybrid():
    with single_thread():  # module fixtures run before the per-test one_torch_thread
        torch.manual_seed(0)
        model = build(resolve("hybrid_medium", num_classes=10, img_size=64))
        open_layer_scales(model, 0.3)
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((24, 3, 64, 64)).astype(np.float32))
        recalibrate_batchnorm(model, [x[:12], x[12:]])
        canonical, _ = canonicalize(model, x[:2])
    return canonical, x.numpy()


def test_attention_ops_get_their_own_quantizers(hybrid, tmp_path):
    canonical, x = hybrid
    plan = build_plan(canonical, x[:8], RECIPE, log=lambda _: None)
    ops = collections.Counter(plan.unit_op(u) for u in plan.units)
    assert ops["matmul"] == 16 and ops["softmax"] == 8  # q.k and attn.v per MQA block, softmax
    with torch.no_grad():
        float_diff = compare(canonical(torch.from_numpy(x[16:])).numpy(),
                             plan.float_model()(torch.from_numpy(x[16:])).numpy())
    assert float_diff.max_rel_abs < 1e-4  # equalization kept the float function, off the calibration set too

    path = export_qdq_onnx(plan, tmp_path / "hybrid.onnx", torch.from_numpy(x[:1]))
    session = ort_session(path, optimized_path=tmp_path / "opt.onnx")
    import onnx

    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["QLinearMatMul"] == 16 and fused["QLinearSoftmax"] == 8, fused
    assert "Conv" not in fused and "MatMul" not in fused, fused
    reference = run_session(ort_session(path, disable_optimizations=True), x[16:])
    with torch.no_grad():
        fq = plan.fake_quant_model()(torch.from_numpy(x[16:])).numpy()
        flt = plan.float_model()(torch.from_numpy(x[16:])).numpy()
    # torch fake-quant and ORT's reference QDQ execution differ only by rounding ties, which a
    # random-init network amplifies layer by layer (measured: 31 dB apart, vs 24 dB between
    # fake-quant and float); so the bound is relative to the quantization noise itself
    quant_noise = compare(flt, fq).sqnr_db
    assert compare(fq, reference).sqnr_db > quant_noise + 3.0, (compare(fq, reference).sqnr_db, quant_noise)
    assert np.all(np.isfinite(run_session(session, x[16:])))
