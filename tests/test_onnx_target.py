"""Every MNv4 variant exports to ONNX and passes parity in onnxruntime (small inputs)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mnv4_deploy import export
from mnv4_deploy.errors import UsageError
from mnv4_deploy.preprocess import Preprocess
from mnv4_deploy.registry import ExportOptions

from conftest import SMALL

VARIANTS = ["conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large"]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_exports_folded_and_passes_parity(name, tmp_path):
    report = export(name, "onnx", tmp_path, img_size=SMALL, golden_count=4, log=lambda _: None)
    result = report.result("onnx")
    assert result.status == "passed", result.failures or result.reason
    assert result.parity["cosine"] > 0.99999 and result.parity["top1_agreement"] == 1.0
    ops = _ops(tmp_path / result.artifact)
    assert "BatchNormalization" not in ops
    if name.startswith("hybrid"):
        assert {"MatMul", "Softmax"} <= ops  # attention is explicit, not a fused op
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["canonical"]["norms_left"] == [] and saved["canonical"]["verification"]["cosine"] > 0.99999
    assert report.exit_code == 0


def test_fp16_opset_and_dynamic_batch(tmp_path):
    opts = ExportOptions(opset=11, dynamic_batch=True, simplify=True)
    report = export("hybrid_medium", "onnx,onnx-fp16", tmp_path, img_size=SMALL, golden_count=3, options=opts,
                    log=lambda _: None)
    assert [r.status for r in report.results] == ["passed", "passed"]
    fp32 = onnx.load(str(tmp_path / report.result("onnx").artifact))
    assert fp32.opset_import[0].version == 11
    assert fp32.graph.input[0].name == "input" and fp32.graph.output[0].name == "logits"
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    fp16 = onnx.load(str(tmp_path / report.result("onnx-fp16").artifact))
    weights = [i for i in fp16.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert report.result("onnx-fp16").size_bytes < 0.6 * report.result("onnx").size_bytes
    # fp16 is judged by its own (looser) thresholds, and is measurably less exact than fp32
    assert report.result("onnx-fp16").parity["max_abs"] > report.result("onnx").parity["max_abs"]


def test_any_torch_module_with_an_explicit_contract(tmp_path):
    """A model outside timm goes through the same canonicalization and validation."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    contract = Preprocess(crop_size=(32, 32), resize_short=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    report = export(model, "onnx", tmp_path, contract=contract, name="tiny-head", log=lambda _: None)
    assert report.result("onnx").status == "passed"
    assert report.canonical["norms_folded"] == 1
    assert report.model["num_classes"] == 5 and report.contract["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(UsageError, match="explicit preprocessing contract"):
        export(model, "onnx", tmp_path)


def test_a_wrong_artifact_is_kept_but_marked_failed(tmp_path, monkeypatch):
    """Validation failure is a status and an exit code, never a silent pass."""
    import mnv4_deploy.converters.onnx as onnx_conv

    real = onnx_conv.ort_runner

    def skewed(path):
        runner = real(path)
        inner = runner.run
        runner.run = lambda batch: inner(batch) + np.linspace(0, 1, 1000, dtype=np.float32)
        return runner

    monkeypatch.setattr(onnx_conv, "ort_runner", skewed)
    report = export("conv_small", "onnx", tmp_path, img_size=SMALL, golden_count=3, log=lambda _: None)
    result = report.result("onnx")
    assert result.status == "validation_failed" and report.exit_code == 3
    assert (tmp_path / result.artifact).exists() and any("cosine" in f for f in result.failures)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["artifacts"][0]["status"] == "validation_failed" and manifest["exit_code"] == 3


def _tiny_onnx(path) -> None:
    """A 1x3x8x8 -> 1x3 ONNX model (global average pool), enough to build sessions on."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_ort_threads_sleep_between_runs_except_when_timing_latency(tmp_path):
    """Validation/evaluation sessions do not spin (the decode workers and the reference need the cores);
    the latency measurement times the spinning variant, and its runtime string says so."""
    from mnv4_deploy.converters.onnx import SPINNING, ort_runner, ort_session
    from mnv4_deploy.latency import artifact_latency
    from mnv4_deploy.registry import load_target

    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path)
    assert ort_session(path).get_session_options().get_session_config_entry(SPINNING) == "0"
    assert ort_session(path, spinning=True).get_session_options().get_session_config_entry(SPINNING) == "1"
    runner = ort_runner(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(runner.run(x), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)  # fed one at a time
    spinning = runner.latency_variant()
    assert "spinning" in spinning.runtime and "spinning" not in runner.runtime
    assert spinning.latency_variant is None
    np.testing.assert_allclose(spinning.run(x), runner.run(x))
    timed = artifact_latency(load_target("onnx"), path, "fp32", {}, (8, 8), warmup=1, runs=3)
    assert "spinning" in timed["runtime"] and timed["runs"] >= 3


def test_the_bpu_bundle_runner_keeps_the_spinning_latency_variant(tmp_path):
    """The BPU bundle's runner wraps the ORT runner; its latency variant wraps the spinning one."""
    from mnv4_deploy.converters.bpu.target import flattened
    from mnv4_deploy.converters.onnx import ort_runner

    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path)
    runner = flattened(ort_runner(path))
    spinning = runner.latency_variant()
    assert "spinning" in spinning.runtime and "spinning" not in runner.runtime
    assert spinning.runtime.endswith("the bundle's float ONNX") and spinning.latency_variant is None
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(spinning.run(x), runner.run(x))
