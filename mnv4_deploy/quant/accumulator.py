"""The int32 accumulator of an integer conv/linear: its bias plus every product must fit.

An integer runtime adds a channel's int32 bias and its products (input code minus zero point,
times an int8 weight) in int32, and past 2^31 - 1 it wraps (onnxruntime's MLAS, C++ kernels) or
saturates rather than widening. A channel whose BatchNorm gamma folded to ~0 ("dead": tiny
weights, a bias huge against input_scale x weight_scale) can only hold its bias in int32 on a
large weight scale; if that bias fills int32 to the limit, the products push the sum past it.
Measured on EfficientNet-Lite1 (real weights), where the plan had put such biases at
-2,147,481,600: onnxruntime gave 3.01 on the stem's channel 12 on ~65% of pixels where the
plan's emulation gives 0.

So every channel keeps |bias_int| + span x sum(|w_int|) <= INT32_MAX, span being its input
grid's qmax - qmin (255 on any 8-bit grid): that bounds raw uint8 codes and code - zero point
alike, whichever the kernel multiplies. The weight scales leave room for it (`headroom_scales`,
raising a dead channel's scale so its bias shrinks in integer steps; tiny weights then round to
a few steps or none, which is what they are), and the int32 bias is clipped to what is left
(`bias_int_limit`), so the emulation computes what an int32 accumulator does.
"""
from __future__ import annotations

import torch

INT32_MAX = 2 ** 31 - 1
WIDEST_CODE_SPAN = 255  # qmax - qmin of an 8-bit grid: activations.bits is at most 8
# When weights are chosen the bias and the sums may fill this share of int32; the rest absorbs
# what moves afterwards (bias correction shifts the bias, AdaRound moves integers by one step).
WEIGHT_TIME_SHARE = 0.5


def accumulation_bound(weight_int: torch.Tensor, code_span: int) -> torch.Tensor:
    """Per output channel (int64): the largest |sum of products| inputs on a grid of `code_span` can give."""
    taps = weight_int.reshape(weight_int.shape[0], -1).to(torch.int64)
    return taps.abs().sum(dim=1) * int(code_span)


def bias_int_limit(weight_int: torch.Tensor, code_span: int) -> torch.Tensor:
    """Per output channel: the largest |int32 bias| that leaves room for every sum of products."""
    return (INT32_MAX - accumulation_bound(weight_int, code_span)).clamp(min=0)


def headroom_scales(weight: torch.Tensor, scale: torch.Tensor, qmax: torch.Tensor, bias_fill_scale: torch.Tensor,
                    code_span: int = WIDEST_CODE_SPAN) -> torch.Tensor:
    """`scale` raised, per output channel, until bias + largest sum of products fit WEIGHT_TIME_SHARE of int32.

    weight: the float weights (channel axis 0); qmax: each channel's largest integer, shaped to
    broadcast against `weight`; bias_fill_scale: per channel, the weight scale at which the bias
    alone would fill int32 (|bias| / (input_scale x INT32_MAX)), so at scale s the bias takes
    INT32_MAX x bias_fill_scale / s steps. Channels that fit already keep their scale.
    """
    budget = WEIGHT_TIME_SHARE * INT32_MAX
    w = weight.detach().double().reshape(weight.shape[0], -1)
    fill = bias_fill_scale.double().reshape(-1) * INT32_MAX
    limit = qmax.double().reshape(-1, 1)
    # |round(w / s)| <= |w| / s + 1/2, so this scale is always enough (when the taps alone fit)
    spare = budget - code_span * w.shape[1] / 2
    enough = (fill + code_span * w.abs().sum(dim=1)) / spare if spare > 0 else None
    s = scale.double().reshape(-1).clone()
    for _ in range(64):
        s32 = s.float().double()  # the float32 scale every artifact stores
        w_int = torch.clamp(torch.round(w / s32.reshape(-1, 1)), -limit, limit)
        reach = fill / s32 + code_span * w_int.abs().sum(dim=1)
        over = reach > budget
        if not over.any():
            break
        raised = torch.maximum(s * 1.01, enough) if enough is not None else s * 2
        s = torch.where(over, raised, s)
    return s.float()


__all__ = ["INT32_MAX", "WEIGHT_TIME_SHARE", "WIDEST_CODE_SPAN", "accumulation_bound", "bias_int_limit",
           "headroom_scales"]
