"""What x86 int8 kernels without VNNI compute: the plan with saturating int16 pair sums.

`vpmaddubsw` multiplies uint8 activation codes by int8 weights and adds *neighbouring* products
into a saturating int16 (quant/overflow.py). oneDNN's and onnxruntime's u8s8 kernels pair
adjacent input channels at one kernel tap; a padded border contributes the zero point's code.
This module runs a plan's fake-quant model with exactly that arithmetic in every GEMM-run
layer, so any host can see what an AVX2-only CPU would compute, and count the pair sums that
clip. Measured against OpenVINO's CPU plugin capped with `ONEDNN_MAX_CPU_ISA=AVX2` on MNv4
conv_small (random init, 64 photos): cosine 0.9997 between the two, where both are 0.982-0.995
from the plan; so the model is the kernels' arithmetic, not a bound.

The saturated output is the exact output minus each clipped pair's excess, which keeps the
float work to one pair-sum tensor per layer and kernel tap.
"""
from __future__ import annotations

import copy
import types
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modules import QuantConv2d, QuantLinear, QuantWeighted, is_depthwise
from .overflow import INT16_MAX, INT16_MIN

if TYPE_CHECKING:
    from .plan import QuantPlan


def _excess(pairs: torch.Tensor) -> torch.Tensor:
    """How far each pair sum lies outside int16 (positive above, negative below, 0 inside)."""
    return F.relu(pairs - INT16_MAX) - F.relu(INT16_MIN - pairs)


def _codes(layer: QuantWeighted, x: torch.Tensor) -> torch.Tensor:
    """The uint8 codes a kernel multiplies (int8 activations shifted by +128, as the kernels do)."""
    q = layer.input_qparams
    return torch.round(x / q.scale) + (q.zero_point - q.qmin)


def _even_channels(codes: torch.Tensor, weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad an odd input-channel count with one zero channel (zero weight), as the kernels' blocking does."""
    if codes.shape[dim] % 2 == 0:
        return codes, weight
    pad_codes = [0, 0] * (codes.dim() - 1 - dim) + [0, 1]
    pad_weight = [0, 0] * (weight.dim() - 2) + [0, 1]
    return F.pad(codes, pad_codes), F.pad(weight, pad_weight)


def linear_excess(layer: QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of clipped excess per output, in integer units; number of clipped pair sums)."""
    codes = _codes(layer, x).reshape(-1, x.shape[-1])
    codes, weight = _even_channels(codes, layer.weight_int.float(), 1)
    excess, clipped = _tap_excess(codes[:, :, None], weight)  # rows as the batch, one position each
    return excess[:, :, 0].reshape(*x.shape[:-1], -1), clipped


def _tap_excess(tap: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Clipped excess per output channel and position for one kernel tap.

    tap: (B, 2J, L) codes; weight: (O, 2J) integers. Only the (channel, pair) combinations whose
    codes in this batch could leave int16 are computed: with the fix on, none are.
    """
    batch, channels, length = tap.shape
    pairs_n = channels // 2
    codes = tap.reshape(batch, pairs_n, 2, length)
    w = weight.reshape(weight.shape[0], pairs_n, 2)
    top = codes.amax(dim=(0, 3))  # (J, 2): the largest code of each input channel here (codes are >= 0)
    high = (w.clamp(min=0) * top).sum(-1)
    low = (w.clamp(max=0) * top).sum(-1)
    out_idx, pair_idx = torch.nonzero((high > INT16_MAX) | (low < INT16_MIN), as_tuple=True)
    total = torch.zeros(batch, weight.shape[0], length, dtype=torch.float64)
    if out_idx.numel() == 0:
        return total, 0
    picked = codes[:, pair_idx]  # (B, K, 2, L)
    sums = picked[:, :, 0] * w[out_idx, pair_idx, 0, None] + picked[:, :, 1] * w[out_idx, pair_idx, 1, None]
    excess = _excess(sums)
    total.index_add_(1, out_idx, excess.double())
    return total, int((excess != 0).sum())


def conv_excess(layer: QuantConv2d, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of clipped excess per output position, in integer units; number of clipped pair sums)."""
    if layer.groups != 1:
        raise ValueError(f"{layer.unit}: grouped (non-depthwise) convolutions are not modelled")
    q = layer.input_qparams
    codes = _codes(layer, x)
    codes, weight = _even_channels(codes, layer.weight_int.float(), 1)
    pad_h, pad_w = layer.padding
    codes = F.pad(codes, (pad_w, pad_w, pad_h, pad_h), value=float(q.zero_point - q.qmin))
    out_ch, _, kh, kw = weight.shape
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    ho = (codes.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (codes.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = torch.zeros(x.shape[0], out_ch, ho * wo, dtype=torch.float64)
    clipped = 0
    for i in range(kh):  # a kernel pairs channels at one tap: each tap is a 1x1 GEMM of its own
        for j in range(kw):
            tap = codes[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            excess, n = _tap_excess(tap.reshape(x.shape[0], tap.shape[1], -1), weight[:, :, i, j])
            total += excess
            clipped += n
    return total.reshape(x.shape[0], out_ch, ho, wo), clipped


def _saturating_forward(layer: QuantWeighted, counts: dict[str, int]):
    exact_forward = layer.forward

    def forward(self: QuantWeighted, x: torch.Tensor) -> torch.Tensor:
        y = exact_forward(x)
        excess, clipped = (linear_excess if isinstance(self, QuantLinear) else conv_excess)(self, x)
        counts[self.unit] = counts.get(self.unit, 0) + clipped
        scale = torch.tensor(self.input_qparams.scale, dtype=torch.float64) * self.weight_scale.double()
        shape = (-1,) if isinstance(self, QuantLinear) else (-1, 1, 1)
        return (y.double() - excess * scale.reshape(shape)).float()

    return types.MethodType(forward, layer)


def gemm_layers(model: nn.Module) -> list[QuantWeighted]:
    """The quantized layers an x86 CPU runs through u8 x s8 GEMM kernels (quantized input, not depthwise)."""
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))
            and m.quantized and m.input_qparams is not None and not is_depthwise(m)]


class SaturatingModel:
    """The plan's fake-quant model with every GEMM-run layer's pair sums clipped to int16.

    `counts` accumulates, per layer, the pair sums that clipped over every batch run so far.
    """

    def __init__(self, plan: "QuantPlan"):
        self.model = copy.deepcopy(plan.fake_quant_model())
        self.counts: dict[str, int] = {}
        for layer in gemm_layers(self.model):
            layer.forward = _saturating_forward(layer, self.counts)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch -> logits, one image at a time (the pair-sum tensors are large)."""
        outputs = []
        with torch.no_grad():
            for image in np.ascontiguousarray(batch, dtype=np.float32):
                outputs.append(self.model(torch.from_numpy(image[None])).numpy())
        return np.concatenate(outputs)


__all__ = ["SaturatingModel", "conv_excess", "gemm_layers", "linear_excess"]
