"""Int16 pair-sum overflow of x86 int8 kernels without VNNI, and the plan's exact fix for it.

x86 CPUs without VNNI (SSE4/AVX2/AVX-512F: Intel before Ice Lake/Cascade Lake, AMD before
Zen 4) multiply uint8 activation codes by int8 weights with `vpmaddubsw`, which adds two
neighbouring products into a *saturating int16* before widening to int32. Two products of
255 x 127 add up to 64,770, twice what int16 holds, so a dense layer's sum silently clips.
oneDNN (OpenVINO's CPU plugin) and onnxruntime's MLAS u8s8 kernels both do this; VNNI's
`vpdpbusd` (and ARM's dot products) accumulate in int32 and never clip.

What the kernel multiplies are the raw activation *codes* (0..255, zero point included, int8
activations shifted by +128), so a two-sided input whose zero point sits near 128 saturates as
readily as a ReLU output at full scale. The kernels pair neighbours in their reduction order:
input channels side by side at one kernel tap (`_pairings` lists the orders used).

The fix is exact: an output channel gets 7-bit weights (|w| <= 63; 255 * 63 * 2 = 32,130 fits),
with a doubled scale, in the same int8 container every format stores. Which channels:
- `all`: every output channel of every GEMM-run layer (non-depthwise, quantized input): no pair
  sum can leave int16 for any input (NNCF's `overflow_fix="enable"`).
- `auto`: the channels whose neighbouring pair sums can leave int16 for inputs within the
  calibrated ranges: each input channel's largest code on the calibration images, widened by
  `CODE_MARGIN` (held-out photos exceed the calibration maxima a little). A worst case over the
  whole grid is no use as a criterion: with per-channel 8-bit scales every channel's largest
  weight is +-127, so almost any neighbour of the same sign overflows beside it at code 255, and
  that test picks nearly every channel (all of MNv4 conv_small's and of the trained digits net's).
- `off`: 8-bit weights everywhere; the plan reports which layers may saturate.
Depthwise convolutions run in direct kernels that widen before multiplying, so they are left
alone (as NNCF does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ..options import OVERFLOW_FIX_MODES
INT16_MAX = 32767
INT16_MIN = -32768
SAFE_BITS = 7  # 255 * 63 * 2 = 32,130 < 32,767
CODE_MARGIN = 1.25  # `auto`: calibrated per-channel code maxima times this (capped at the grid's top)


def _pairings(weight: torch.Tensor, codes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weights, codes) laid out as neighbour pairs (O, P, 2) in the reduction orders x86 kernels use.

    weight: (O, C, T) integers (T kernel taps; 1 for Linear and 1x1 convs); codes: (C,) the largest
    code each input channel can take. Both runtimes reduce over channels-last data, so
    `vpmaddubsw` pairs input channels side by side at one tap: oneDNN pads the channels to an even
    count (and to its block), onnxruntime (its QLinearConv runs channels-last, com.microsoft
    `channels_last=1`) flattens (tap, channel), which with an odd channel count pairs the last
    channel of one tap with the first of the next. Both orders are checked.
    """
    out, channels, taps = weight.shape
    code = codes.reshape(1, channels, 1).expand(out, channels, taps).to(weight.dtype)
    by_tap = (weight.permute(0, 2, 1), code.permute(0, 2, 1))  # (O, T, C): channels side by side per tap
    orders = [by_tap]
    if channels % 2:
        orders.append((by_tap[0].reshape(out, -1), by_tap[1].reshape(out, -1)))  # flat (tap, channel)
    pairs = []
    for w, c in orders:
        if w.shape[-1] % 2:
            w, c = F.pad(w, (0, 1)), F.pad(c, (0, 1))
        pairs.append((w.reshape(out, -1, 2), c.reshape(out, -1, 2)))
    return pairs


def pair_sum_extremes(weight_int: torch.Tensor, codes: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: the largest and smallest sum of two neighbouring products code * w.

    `codes`: the largest code the input can hold, one for the layer or one per input channel
    (codes are >= 0, so a positive weight peaks at the largest code and a negative one bottoms
    there). Taken over every pairing the kernels use (`_pairings`).
    """
    weight = weight_int.reshape(weight_int.shape[0], weight_int.shape[1], -1).to(torch.int64)
    codes = torch.as_tensor(codes, dtype=torch.int64).expand(weight.shape[1])
    high = torch.zeros(weight.shape[0], dtype=torch.int64)
    low = torch.zeros(weight.shape[0], dtype=torch.int64)
    for w, c in _pairings(weight, codes):
        products = w * c
        high = torch.maximum(high, products.clamp(min=0).sum(-1).amax(-1))
        low = torch.minimum(low, products.clamp(max=0).sum(-1).amin(-1))
    return high, low


def channels_at_risk(weight_int: torch.Tensor, codes: int | torch.Tensor) -> torch.Tensor:
    """Boolean per output channel: can a pair sum of this channel leave int16 with input codes up to `codes`?"""
    high, low = pair_sum_extremes(weight_int, codes)
    return (high > INT16_MAX) | (low < INT16_MIN)


def channels_to_fix(mode: str, weight_int: torch.Tensor, code_maxima: torch.Tensor | None, code_span: int) -> torch.Tensor:
    """The output channels `mode` gives 7-bit weights.

    weight_int: the layer's integers at its own bits; code_maxima: the largest code each input
    channel showed on the calibration images (`auto` only); code_span: the input grid's top code.
    """
    if mode == "off":
        return torch.zeros(weight_int.shape[0], dtype=torch.bool)
    if mode == "all":
        return torch.ones(weight_int.shape[0], dtype=torch.bool)
    if mode == "auto":
        if code_maxima is None:
            raise ValueError("overflow fix auto needs the calibrated code maxima of the layer's input")
        return channels_at_risk(weight_int, calibrated_codes(code_maxima, code_span))
    raise ValueError(f"overflow fix mode {mode!r} is not one of {', '.join(OVERFLOW_FIX_MODES)}")


def calibrated_codes(code_maxima: torch.Tensor, code_span: int) -> torch.Tensor:
    """The codes `auto` guards against: each channel's calibrated maximum times CODE_MARGIN, within the grid."""
    return torch.clamp(torch.ceil(code_maxima.double() * CODE_MARGIN), max=code_span).to(torch.int64)


def input_code_maxima(layers: dict[str, Any], grids: dict[str, Any], model: torch.nn.Module,
                      data: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The largest code each input channel of each layer takes on `data`, on its input grid.

    layers: unit name -> module (Conv2d: channels on axis 1; Linear: on the last axis); grids:
    unit name -> QParams of its input. `model` runs the batches (the float graph is enough:
    codes of its activations are within a step of the quantized model's).
    """
    found: dict[str, torch.Tensor] = {}

    def hook(name: str, channel_axis: int) -> Any:
        grid = grids[name]

        def record(_module: Any, args: tuple) -> None:
            x = args[0].detach()
            codes = torch.clamp(torch.round(x / grid.scale) + grid.zero_point, grid.qmin, grid.qmax) - grid.qmin
            axis = channel_axis % codes.dim()
            top = codes.amax(dim=[d for d in range(codes.dim()) if d != axis])
            found[name] = top if name not in found else torch.maximum(found[name], top)
        return record

    handles = [m.register_forward_pre_hook(hook(name, 1 if m.weight.dim() == 4 else -1)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in data:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return found


@dataclass(frozen=True)
class LayerOverflow:
    """One GEMM-run layer after the plan: its 7-bit channels, and the channels that can still clip.

    `at_risk_any_input` counts channels that can saturate for some input on the grid;
    `at_risk_calibrated` those that can for inputs within the calibrated ranges (None: not measured).
    """

    layer: str
    channels: int
    seven_bit: int
    at_risk_any_input: int
    at_risk_calibrated: int | None
    worst_pair_sum: int  # the largest |neighbouring pair sum| its weights allow over the whole grid

    @property
    def at_risk(self) -> int:
        """Channels that may clip on realistic inputs: the calibrated count where measured, else any input."""
        return self.at_risk_any_input if self.at_risk_calibrated is None else self.at_risk_calibrated

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "seven_bit_channels": self.seven_bit,
                "channels_at_risk_any_input": self.at_risk_any_input,
                "channels_at_risk_calibrated": self.at_risk_calibrated, "worst_pair_sum": self.worst_pair_sum}


def layer_overflow(layer: str, weight_int: torch.Tensor, seven_bit: torch.Tensor, code_span: int,
                   code_maxima: torch.Tensor | None = None) -> LayerOverflow:
    """A layer's state against its whole input grid and, given the calibrated code maxima, against those."""
    high, low = pair_sum_extremes(weight_int, code_span)
    risk = (high > INT16_MAX) | (low < INT16_MIN)
    worst = int(torch.maximum(high, -low).max()) if high.numel() else 0
    calibrated = None
    if code_maxima is not None:
        calibrated = int(channels_at_risk(weight_int, calibrated_codes(code_maxima, code_span)).sum())
    return LayerOverflow(layer, int(weight_int.shape[0]), int(seven_bit.sum()), int(risk.sum()), calibrated, worst)


def summarize(mode: str, layers: list[LayerOverflow]) -> dict[str, Any]:
    """The plan report's `overflow` section: the mode, totals, a verdict, and every GEMM-run layer.

    `layers_at_risk` are the layers that may clip on realistic inputs (within the calibrated ranges
    where they were measured); `layers_at_risk_any_input` those that could for some input at all.
    """
    at_risk = [x.layer for x in layers if x.at_risk]
    any_input = [x.layer for x in layers if x.at_risk_any_input]
    if at_risk:
        verdict = (f"{len(at_risk)} GEMM-run layers may saturate int16 pair sums on x86 CPUs without VNNI "
                   "(AVX2, AVX-512F without VNNI): results there may differ from this plan; "
                   "--overflow-fix auto or all prevents it")
    elif any_input:
        verdict = (f"no int16 pair sum saturates for inputs within the calibrated ranges (x{CODE_MARGIN} margin) "
                   "on x86 CPUs without VNNI; far outside them, " f"{len(any_input)} layers could "
                   "(--overflow-fix all rules that out too)")
    else:
        verdict = "no int16 pair sum can saturate for any input: x86 CPUs without VNNI compute this plan exactly"
    return {
        "mode": mode,
        "gemm_layers": len(layers),
        "channels": sum(x.channels for x in layers),
        "seven_bit_channels": sum(x.seven_bit for x in layers),
        "code_margin": CODE_MARGIN if mode == "auto" else None,
        "layers_at_risk": at_risk,
        "layers_at_risk_any_input": any_input,
        "verdict": verdict,
        "layers": {x.layer: x.to_dict() for x in layers},
    }


def x86_saturation(plan: Any) -> dict[str, Any]:
    """Metadata an artifact run by x86 int8 kernels carries: the plan's verdict, and a note when it may saturate."""
    overflow = plan.overflow
    meta: dict[str, Any] = {"x86_without_vnni": overflow["verdict"], "overflow_fix": overflow["mode"]}
    if overflow["layers_at_risk"]:
        meta["notes"] = [f"may saturate on x86 CPUs without VNNI ({len(overflow['layers_at_risk'])} layers; "
                         "--overflow-fix auto or all prevents it)"]
    return meta


__all__ = ["CODE_MARGIN", "SAFE_BITS", "LayerOverflow", "calibrated_codes", "channels_at_risk",
           "channels_to_fix", "input_code_maxima", "layer_overflow", "pair_sum_extremes", "summarize",
           "x86_saturation"]
