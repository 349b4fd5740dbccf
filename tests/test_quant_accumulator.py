"""The int32 accumulator of every quantized layer: bias plus the largest sum of products fits.

A channel whose BatchNorm gamma is ~0 ("dead": EfficientNet-Lite1 has dozens) folds into tiny
weights and a bias that is huge against input_scale x weight_scale. When its int32 bias sat at
the int32 limit, onnxruntime's accumulator (bias + products) wrapped around: Lite1's stem
channel 12 gave 3.01 where the plan's emulation (and the float model) give 0.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from mnv4_deploy.canonicalize import canonicalize
from mnv4_deploy.quant import build_plan
from mnv4_deploy.quant.accumulator import INT32_MAX, accumulation_bound
from mnv4_deploy.quant.modules import QuantWeighted
from mnv4_deploy.quant.onnx_qdq import export_qdq_onnx, ort_session

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEAD_STEM = {2: -3.0, 5: 3.0, 6: -1.0}  # channel -> BatchNorm beta (gamma 1e-6): ReLU6 gives 0, 3, 0
DEAD_HEAD = {1: 2.5, 4: -2.5}  # the second conv's dead channels: constant outputs (no activation after)


class DeadChannelNet(nn.Module):
    """conv3x3 + BN + ReLU6, then conv1x1 + BN: the output is the second feature map itself."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def _dead_net() -> nn.Module:
    torch.manual_seed(0)
    net = DeadChannelNet().eval()
    with torch.no_grad():
        for bn, dead in ((net.stem[1], DEAD_STEM), (net.head[1], DEAD_HEAD)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            for channel, beta in dead.items():
                bn.weight[channel] = 1e-6
                bn.bias[channel] = beta
    return net


@pytest.fixture(scope="module")
def dead_plan():
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    heldout = rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    canonical, stats = canonicalize(_dead_net(), torch.from_numpy(calib[:1]))
    assert stats.norms_folded == 2
    plan = build_plan(canonical, calib, "default", log=lambda _: None)
    return canonical, plan, heldout


def test_no_channel_can_overflow_the_int32_accumulator(dead_plan):
    _, plan, _ = dead_plan
    layers = [m for m in plan.fake_quant_model().modules() if isinstance(m, QuantWeighted) and m.quantized]
    assert len(layers) == 2
    for layer in layers:
        grid = layer.input_qparams
        b_int = layer.bias_int()
        reach = b_int.abs() + accumulation_bound(layer.weight_int, grid.qmax - grid.qmin)
        assert int(reach.max()) <= INT32_MAX, (layer.unit, int(reach.max()))
        # and the bias is kept, not clipped: its int32 value is the plan's float bias within half a step
        # (plus float32's rounding of bias / step, which is what runtimes store too)
        step = (grid.scale * layer.weight_scale).double()
        error = (b_int.double() * step - layer.bias_q.double()).abs()
        assert torch.all(error <= 0.5 * step + 1e-6 * layer.bias_q.double().abs()), (layer.unit, error / step)


def _with_head_input_as_output(path) -> None:
    """Add the head conv's input (the stem's dequantized int8 output) to the ONNX graph's outputs."""
    model = onnx.load(str(path))
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    model.graph.output.append(onnx.helper.make_value_info(head.input[0], onnx.TypeProto()))
    model.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(path))


def test_dead_channels_in_onnxruntime_match_the_emulation(dead_plan, tmp_path):
    canonical, plan, heldout = dead_plan
    # weights "auto": uint8 on an x86 host without VNNI, whose int16 pair sums would otherwise clip (overflow.py)
    path = export_qdq_onnx(plan, tmp_path / "int8.onnx", torch.from_numpy(heldout[:1]))
    _with_head_input_as_output(path)
    session = ort_session(path)
    ort_head, ort_stem = session.run(None, {"input": heldout})
    model = plan.fake_quant_model()
    seen = []
    head = next(m for m in model.modules() if isinstance(m, QuantWeighted) and m.unit == plan.layers[-1])
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().numpy()))
    with torch.no_grad():
        emulated = model(torch.from_numpy(heldout)).numpy()
        stem_float = canonical.stem(torch.from_numpy(heldout)).numpy()
    stem = seen[0]
    step = head.input_qparams.scale
    for channel in DEAD_STEM:  # float, emulation and onnxruntime: ReLU6(beta) everywhere
        expected = min(max(DEAD_STEM[channel], 0.0), 6.0)
        assert np.allclose(stem_float[:, channel], expected, atol=1e-3)
        assert np.abs(stem[:, channel] - expected).max() <= step, channel
        wrong = np.abs(ort_stem[:, channel] - stem[:, channel]) > step / 2
        assert not wrong.any(), f"stem channel {channel}: onnxruntime differs on {wrong.mean():.0%} of pixels"
    # elsewhere onnxruntime's integer kernels agree up to rounding ties: one step of the grid
    assert np.abs(ort_stem - stem).max() <= step * 1.001
    for channel, value in DEAD_HEAD.items():
        assert np.allclose(emulated[:, channel], value, atol=0.05), channel
    assert np.abs(ort_head - emulated).max() < 0.05


def test_headroom_raises_only_the_channels_that_need_it():
    from mnv4_deploy.quant.accumulator import WEIGHT_TIME_SHARE
    from mnv4_deploy.quant.weights import bias_fit_min_scale, quantize_weight

    torch.manual_seed(1)
    weight = torch.randn(6, 32, 3, 3) * 0.1
    weight[1] *= 1e-6  # dead channels: tiny weights, large bias
    weight[4] *= 1e-6
    bias = torch.randn(6) * 0.2
    bias[1], bias[4] = -3.0, 3.0
    input_scale = 0.02
    bits = torch.tensor([8, 8, 7, 7, 8, 8])  # the overflow fix's 7-bit channels keep their grid
    plain_int, plain_scale = quantize_weight(weight, bits)
    w_int, scale = quantize_weight(weight, bits, True, bias_fit_min_scale(bias, input_scale))
    live = torch.tensor([0, 2, 3, 5])
    assert torch.equal(scale[live], plain_scale[live]) and torch.equal(w_int[live], plain_int[live])
    assert torch.all(w_int[2:4].abs() <= 63)
    b_int = torch.round(bias / (input_scale * scale)).to(torch.int64)
    reach = b_int.abs() + accumulation_bound(w_int, 255)
    assert torch.all(reach <= WEIGHT_TIME_SHARE * INT32_MAX * 1.0001), reach
    # the dead channels' weights are still what they are on that grid (tiny, not clipped)
    shape = (-1, 1, 1, 1)
    assert torch.all((w_int.float() * scale.reshape(shape) - weight).abs() <= scale.reshape(shape) / 2 * 1.0001)
