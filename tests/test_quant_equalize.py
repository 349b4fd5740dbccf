"""Cross-layer equalization and bias absorption: exact in float, useful in int8."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mnv4_deploy.quant.equalize import EqualizationStats, _input_channel_amax, absorb_biases, equalize, find_pairs
from mnv4_deploy.quant.graph import build_quant_graph
from mnv4_deploy.quant.simulate import FLOAT, run_streams
from mnv4_deploy.validate import compare

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest: small tensors, shared VM


def _float_out(qg, x):
    return run_streams(qg.gm, torch.from_numpy(x), (FLOAT,))[FLOAT].numpy()


def test_cle_preserves_the_float_function_and_equalizes_ranges(digits_plans):
    net = digits_plans.net
    x = net.x_heldout[:128]
    qg = build_quant_graph(digits_plans.canonical, torch.from_numpy(x[:1]))
    pairs = find_pairs(qg)
    # depthwise-separable chains are found: expand -> depthwise -> project
    assert any(p.first.endswith("pw_exp.conv") and p.second.endswith("dw_mid.conv") for p in pairs)
    assert any(p.first.endswith("dw_mid.conv") and p.second.endswith("pw_proj.conv") for p in pairs)
    with torch.no_grad():
        reference = digits_plans.canonical(torch.from_numpy(x)).numpy()
    stats = equalize(qg)
    assert stats.iterations < 100  # converged
    diff = np.abs(_float_out(qg, x) - reference).max()
    assert diff < 1e-4, diff  # logits reach ~60: float32 rounding only
    first, second = qg.module(pairs[-1].first), qg.module(pairs[-1].second)
    r1 = first.weight.abs().reshape(first.weight.shape[0], -1).amax(dim=1)
    assert torch.allclose(r1, _input_channel_amax(second), rtol=2e-3)


def test_cle_reduces_int8_error_for_per_tensor_weights(digits_plans):
    """The DFQ setting: one weight scale per tensor, where channel ranges differ most."""
    ref = digits_plans.float_logits
    plain = digits_plans.plan(activations__estimator="minmax", weights__per_channel=False,
                              equalization=False, bias_correction=False)
    cle = digits_plans.plan(activations__estimator="minmax", weights__per_channel=False,
                            equalization=True, bias_correction=False)
    sqnr_plain = compare(ref, digits_plans.quant_logits(plain)).sqnr_db
    sqnr_cle = compare(ref, digits_plans.quant_logits(cle)).sqnr_db
    assert sqnr_cle > sqnr_plain + 1.5, (sqnr_plain, sqnr_cle)  # measured 27.4 -> 31.3 dB


class _Pairs(nn.Module):
    """conv -> ReLU -> 1x1 conv (not absorbable: inexact off the data) and dw conv -> 1x1 conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.c, self.d = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.bias.copy_(torch.linspace(2.0, 6.0, 8))  # channels that never reach zero here
            self.c.bias.copy_(torch.linspace(-3.0, 3.0, 8))  # offsets a linear pair can centre

    def forward(self, x):
        return self.d(self.c(self.b(torch.relu(self.a(x)))))


def test_bias_absorption_is_exact_for_every_input():
    model = _Pairs().eval()
    calib = torch.rand(16, 3, 8, 8).numpy() * 0.2
    unseen = torch.randn(16, 3, 8, 8).numpy() * 3.0  # far outside the calibration range
    qg = build_quant_graph(model, torch.from_numpy(calib[:1]))
    stats = EqualizationStats()
    absorb_biases(qg, torch.from_numpy(calib), 8, stats)
    assert stats.absorbed_pairs == 1 and stats.absorbed_channels == 8  # only c -> d, not across the ReLU
    with torch.no_grad():
        y = torch.nn.functional.conv2d(qg.module("b")(torch.relu(qg.module("a")(torch.from_numpy(calib)))),
                                       qg.module("c").weight, qg.module("c").bias, padding=1, groups=8)
    per_channel = y.transpose(0, 1).reshape(8, -1)
    centre = (per_channel.amin(dim=1) + per_channel.amax(dim=1)) / 2
    assert float(centre.abs().max()) < 1e-4  # c's output channels are centred; d took the offsets
    for x in (calib, unseen):
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        assert np.abs(_float_out(qg, x) - reference).max() < 1e-4
