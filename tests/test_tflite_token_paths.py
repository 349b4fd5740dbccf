"""Token paths in TFLite int8 (issue #23): wide softmaxes and constants the converter folds.

A random-init TokenNet (tokens read a 32x32 map through a softmax over 1024 pixels, with no key or
value projection; the first query depends on the learned tokens alone) through tflite-int8 and
edgetpu. Before: tflite-int8 computed each softmax on LiteRT's fixed 1/256 grid (cosine ~0.8 vs
float) and the folded token query came out per-channel on the quantizer's own scale, which
LiteRT's int8 BATCH_MATMUL turned into all zero points (0.987 vs the plan's emulation).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from torch import nn

from mnv4_deploy import export
from mnv4_deploy.converters.tflite.flatbuffer import read_tflite
from mnv4_deploy.converters.tflite.full_integer import float_ops
from mnv4_deploy.models import recalibrate_batchnorm

from test_token_fidelity import TokenNet
from trained_net import TrainSettings, digits_arrays, digits_contract, write_digit_images


class DynamicMax(nn.Module):
    """Dynamic ReLU's core: the max of two input-conditioned affines of a feature map."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv, self.coefficients = nn.Conv2d(3, c, 3, 1, 1), nn.Linear(c, 4 * c)
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a1, b1, a2, b2 = self.coefficients(x.mean((2, 3))).reshape(-1, 4, x.shape[1], 1, 1).unbind(1)
        return self.head(torch.maximum(x * a1 + b1, x * (0.5 * a2) + 0.1 * b2).mean((2, 3)))


def _export(model: nn.Module, targets: str, root, calib, heldout, labels):
    write_digit_images(root / "calib", calib[:64], digits_contract(32))
    write_digit_images(root / "golden", heldout[:16], digits_contract(32), labels[:16])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = export(model, targets, root / "out", contract=digits_contract(32), name="tokens",
                        calib_data=root / "calib", data=root / "golden", golden_count=16, log=lambda _: None)
    finally:
        torch.set_num_threads(previous)
    return {r.target: r for r in report.results}, root / "out"


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    _, _, calib, heldout, labels = digits_arrays(TrainSettings(img_size=32))
    torch.manual_seed(0)
    model = TokenNet().eval()
    recalibrate_batchnorm(model, [torch.from_numpy(calib[:64])])
    return _export(model, "tflite-int8,edgetpu", tmp_path_factory.mktemp("token-net"), calib, heldout, labels)


def _quantization(path, name: str) -> tuple[float, int]:
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = Interpreter(model_path=str(path)).get_tensor_details()
    q = next(d["quantization_parameters"] for d in details if d["name"] == name)
    return float(q["scales"][0]), int(q["zero_points"][0])


def test_tflite_int8_runs_wide_softmaxes_in_float_onto_the_plans_grid(token_run):
    results, out = token_run
    r = results["tflite-int8"]
    assert r.status == "passed", (r.reason, r.failures)
    assert r.parity["cosine"] >= 0.99 and r.emulation_parity["cosine"] >= 0.995, (r.parity, r.emulation_parity)
    islands = r.metadata["float_softmax"]
    assert [(i["unit"], i["width"]) for i in islands] == [("softmax", 1024), ("softmax_1", 1024), ("softmax_2", 1024)]
    path = out / r.artifact
    ops = read_tflite(path).ops
    for i, op in enumerate(ops):
        if op.op == "SOFTMAX":  # DEQUANTIZE -> float SOFTMAX -> QUANTIZE, nothing else float
            assert ops[i - 1].op == "DEQUANTIZE" and ops[i + 1].op == "QUANTIZE"
            assert op.inputs[0].dtype == op.outputs[0].dtype == "FLOAT32"
    assert sum(op.op == "SOFTMAX" for op in ops) == 3
    assert len(float_ops(path)) == 9  # the three islands' ops, all of them
    for island in islands:  # the int8 tensor the attention matmul reads carries the plan's grid, not 1/256
        scale, zero_point = _quantization(path, island["tensor"])
        assert np.isclose(scale, island["grid"][0], rtol=1e-6) and zero_point == island["grid"][1]
        assert scale < 2.0 ** -10
    report = (out / "report.md").read_text()
    assert "ops kept in float" in report and "SOFTMAX of plan unit softmax_2" in report


def test_constants_the_converter_folds_sit_on_their_points_grids(token_run):
    results, _ = token_run
    written = results["tflite-int8"].metadata["plan_weights"]["constants_on_plan_grid"]
    # the token-only query; the tokens themselves reach LiteRT summed with the next Linear's bias (no plan point)
    assert written == ["readers.0.q"], written


def test_edgetpu_stays_full_integer_on_the_fixed_grid_and_says_so(token_run):
    results, out = token_run
    r = results["edgetpu"]
    assert float_ops(out / r.artifact) == []
    assert r.metadata["full_integer_source"].startswith("converted")  # not the tflite-int8 file with float ops
    assert r.emulation_parity["cosine"] >= 0.999, r.emulation_parity  # it computes its (fixed-grid) plan
    assert any("fixed 1/256" in note for note in r.metadata["notes"])


def test_max_of_two_activations_reads_both_on_its_output_grid_as_litert_does(tmp_path):
    """LiteRT's int8 MAXIMUM reads its inputs on the output's grid; the plan puts them there too."""
    from mnv4_deploy.canonicalize import canonicalize
    from mnv4_deploy.quant import build_plan

    _, _, calib, heldout, labels = digits_arrays(TrainSettings(img_size=32))
    torch.manual_seed(0)
    model = DynamicMax().eval()
    canonical, _ = canonicalize(model, torch.from_numpy(heldout[:1]))
    plan = build_plan(canonical, calib[:64], "default", log=lambda _: None)
    maximum = next(u for u in plan.units if plan.unit_op(u) == "maximum")
    ranges = plan.activation_ranges
    inputs = [p for p in ranges if p != maximum and ranges[p] == ranges[maximum]]
    assert len(inputs) == 2, inputs  # both affines, on the max's own grid
    results, _ = _export(model, "tflite-int8", tmp_path, calib, heldout, labels)
    r = results["tflite-int8"]
    assert r.metadata["plan_ranges"]["tensors_off_plan_grid"] == 0, r.metadata["plan_ranges"]["off_plan_grid"]
    assert r.emulation_parity["cosine"] >= 0.9995, r.emulation_parity
