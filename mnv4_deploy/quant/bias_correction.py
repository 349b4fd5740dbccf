"""Empirical bias correction: remove the mean shift quantization adds to each layer's output.

Rounding weights (and, upstream, activations) shifts the expected output of a channel;
the next ReLU turns that shift into a systematic error that accumulates through a deep
narrow network (NNCF measured -15.7 pt with only per-layer "fast" correction vs -1.2 pt
with this "full" variant on mobilenetv3_small_050). Per layer, in graph order, with every
upstream layer already quantized and corrected:

    bias_q -= E[layer_q(x_quant)] - E[layer_float(x_float)]   (per output channel)

so the correction absorbs both this layer's weight error and what arrives from upstream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .modules import QuantLinear, QuantWeighted


def _channel_mean(y: torch.Tensor, linear: bool) -> torch.Tensor:
    if linear:
        return y.reshape(-1, y.shape[-1]).mean(dim=0)
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)


def bias_shift(layer: QuantWeighted, x_float: torch.Tensor, x_quant: torch.Tensor) -> torch.Tensor:
    """Per-channel E[quantized output] - E[float output] on the given inputs."""
    linear = isinstance(layer, QuantLinear)
    with torch.no_grad():
        return _channel_mean(layer(x_quant), linear) - _channel_mean(layer.forward_float(x_float), linear)


@dataclass
class BiasCorrectionStats:
    """How much each corrected layer's bias moved (in output units)."""

    shifts: dict[str, float] = field(default_factory=dict)  # layer -> max |shift|

    def to_dict(self) -> dict[str, Any]:
        values = list(self.shifts.values())
        return {"layers": len(values), "max_abs_shift": max(values, default=0.0),
                "mean_abs_shift": sum(values) / len(values) if values else 0.0}


def correct_bias(layer: QuantWeighted, x_float: torch.Tensor, x_quant: torch.Tensor,
                 stats: BiasCorrectionStats | None = None) -> None:
    """Subtract the measured mean shift from the quantized layer's bias (in place)."""
    shift = bias_shift(layer, x_float, x_quant)
    layer.bias_q = layer.bias_q - shift
    if stats is not None:
        stats.shifts[layer.unit] = float(shift.abs().max())
