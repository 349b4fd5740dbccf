"""The fake-quant building blocks: what an int8 runtime computes, written in float torch.

`FakeQuant` rounds a tensor onto its per-tensor grid; `QuantConv2d`/`QuantLinear` use
per-channel int8 weights and an int32 bias on the grid input_scale * weight_scale, as
QLinearConv/QGemm do. Each module also keeps its float original (`forward_float`), so one
graph can run the float model and the quantized one side by side (see `simulate`).

How the quantize/dequantize steps are computed is delegated to `QuantOps`: the torch
default here, and an emitter swaps in its own (same numbers, its own graph nodes), so no
format-specific code lives in this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .accumulator import bias_int_limit
from .qparams import QParams


class QuantOps:
    """Quantize/dequantize as plain torch arithmetic (the reference semantics).

    Matches ONNX QuantizeLinear/DequantizeLinear: divide by the scale, round half to
    even, add the zero point, saturate.
    """

    def fake_quant(self, x: torch.Tensor, q: QParams) -> torch.Tensor:
        scale = torch.tensor(q.scale, dtype=x.dtype)
        return (torch.clamp(torch.round(x / scale) + q.zero_point, q.qmin, q.qmax) - q.zero_point) * scale

    def weight(self, w_int: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Dequantized per-output-channel weights (channel axis 0)."""
        return w_int.to(torch.float32) * scale.reshape(-1, *([1] * (w_int.dim() - 1)))

    def bias(self, b_int: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Dequantized int32 bias."""
        return b_int.to(torch.float32) * scale

    def frozen_weight(self, w_int: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        """A frozen layer's weights (see `QuantWeighted.freeze`): int8 constants behind one dequantize.

        Weights are symmetric, so `zero_point` is all zeros and the numbers are `weight`'s; an
        exporter overrides this to spell the dequantize as its own op.
        """
        return self.weight(w_int, scale)


class FakeQuant(nn.Module):
    """A per-tensor activation quantizer at one quantization point; off when `qparams` is None."""

    def __init__(self, point: str, qparams: QParams | None = None):
        super().__init__()
        self.point = point
        self.qparams = qparams
        self.ops = QuantOps()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.qparams is None else self.ops.fake_quant(x, self.qparams)

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.point}: {self.qparams}"


class QuantWeighted(nn.Module):
    """Shared state of a weighted layer: float original, int weights, corrected bias.

    weight/bias: the float layer's (after equalization); the float reference uses them.
    weight_int/weight_scale: per-output-channel integer weights (any rounding).
    bias_q: the bias the quantized layer adds (bias correction changes this one only).
    input_qparams: the grid of the layer's input when that input is quantized; then the
    bias is rounded to int32 on input_scale * weight_scale, as the runtime stores it.
    quantized: False keeps the layer in float (accuracy fallback).
    """

    def __init__(self, unit: str, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.unit = unit
        out = weight.shape[0]
        self.register_buffer("weight", weight.detach().clone().float())
        self.register_buffer("bias", (bias.detach().clone() if bias is not None else torch.zeros(out)).float())
        self.register_buffer("weight_int", torch.zeros_like(self.weight, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("bias_q", self.bias.clone())
        # bits of each output channel's grid (7 where the overflow fix applies); not a buffer, so
        # exported programs do not carry it
        self.weight_bits = torch.full((out,), 8, dtype=torch.int64)
        self.input_qparams: QParams | None = None
        self.quantized = False
        self.frozen = False
        self.ops = QuantOps()

    def bias_scale(self) -> torch.Tensor | None:
        if self.input_qparams is None:
            return None
        return torch.tensor(self.input_qparams.scale, dtype=torch.float32) * self.weight_scale

    def bias_int(self) -> torch.Tensor | None:
        """The int32 bias a runtime stores, or None when the input is not quantized.

        Clipped so that the bias plus any sum of products stays within int32 (accumulator.py): the
        weight scales leave that room, so the clip only bites where bias correction grew a bias past it.
        """
        scale = self.bias_scale()
        if scale is None:
            return None
        grid = self.input_qparams
        limit = bias_int_limit(self.weight_int, grid.qmax - grid.qmin)
        steps = torch.round(self.bias_q / scale).clamp(-2.0 ** 31, 2.0 ** 31).to(torch.int64)
        return torch.minimum(torch.maximum(steps, -limit), limit)

    def effective_weight(self) -> torch.Tensor:
        if self.frozen:
            return self.ops.frozen_weight(self.weight_int, self.weight_scale, self.weight_zero_point)
        return self.ops.weight(self.weight_int, self.weight_scale) if self.quantized else self.weight

    def effective_bias(self) -> torch.Tensor:
        if self.frozen:
            return self.frozen_bias
        if not self.quantized:
            return self.bias
        b_int = self.bias_int()
        return self.bias_q if b_int is None else self.ops.bias(b_int, self.bias_scale())

    def freeze(self) -> None:
        """Hold this quantized layer's numbers as constants, for export to another runtime.

        The forward then reads the int8 weights through one `ops.frozen_weight` and adds the bias
        `effective_bias` gives now, as a float constant: the same numbers, without the per-forward
        int32 bias rounding and casts a trace would otherwise record. The float originals are
        dropped (`forward_float` no longer works): an exported program lifts every buffer, and
        unused ones would stay in its constant table.
        """
        if not self.quantized:
            raise ValueError(f"{self.unit}: only a quantized layer can be frozen (this one stays float)")
        with torch.no_grad():
            bias = self.effective_bias().detach().float().clone()
        for unused in ("weight", "bias", "bias_q"):
            self._buffers.pop(unused, None)
        self.register_buffer("weight_zero_point", torch.zeros(self.weight_scale.shape, dtype=torch.int64))
        self.register_buffer("frozen_bias", bias)
        self.frozen = True

    def set_weights(self, weight_int: torch.Tensor, weight_scale: torch.Tensor,
                    bits: torch.Tensor | None = None) -> None:
        """New integer weights and scales; `bits` per output channel when their grids change."""
        self.weight_int = weight_int.to(torch.int8)
        self.weight_scale = weight_scale.float().reshape(-1)
        if bits is not None:
            self.weight_bits = bits.to(torch.int64).reshape(-1).clone()


class QuantConv2d(QuantWeighted):
    """A Conv2d with per-channel int8 weights (zero padding only, as the runtimes have)."""

    def __init__(self, unit: str, conv: nn.Conv2d):
        super().__init__(unit, conv.weight, conv.bias)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.effective_weight(), self.effective_bias())

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight, self.bias)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self._conv(x, weight, bias)

    def to_float_module(self, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
        conv = nn.Conv2d(self.weight.shape[1] * self.groups, self.weight.shape[0], self.weight.shape[2:],
                         self.stride, self.padding, self.dilation, self.groups, bias=True)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        return conv


class QuantLinear(QuantWeighted):
    """A Linear with per-output-feature int8 weights."""

    def __init__(self, unit: str, linear: nn.Linear):
        super().__init__(unit, linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def to_float_module(self, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=True)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        return linear


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def is_depthwise(layer: nn.Module) -> bool:
    """One filter per channel: runtimes run these with direct kernels, not as a GEMM."""
    return isinstance(layer, QuantConv2d) and layer.groups > 1 and layer.groups == layer.weight.shape[0] \
        and layer.weight.shape[1] == 1


def wrap_layer(unit: str, module: nn.Module) -> QuantWeighted:
    """The quant-aware twin of a float Conv2d/Linear."""
    if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
        # a subclass may compute something else (timm's Conv2dSame pads in forward)
        raise UsageError(f"{unit}: {type(module).__name__} is not a plain Conv2d",
                         "quantization supports nn.Conv2d with fixed zero padding (timm MNv4 uses it)")
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise UsageError(f"{unit}: padding mode {module.padding_mode!r} is not supported",
                             "int8 runtimes pad convolutions with zeros")
        return QuantConv2d(unit, module)
    return QuantLinear(unit, module)
