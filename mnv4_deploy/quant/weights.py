"""Int8 weights: symmetric scales per output channel, nearest or AdaRound rounding.

Depthwise convolutions of small MobileNets have channels whose ranges differ by 100x;
one scale per tensor erases the small ones, one scale per output channel does not.
AdaRound (Nagel et al. 2020) then chooses, per weight, rounding up or down so that the
layer's *output* is reconstructed, rather than each weight on its own: a short optimisation
per layer on the calibration inputs, bounded by `iterations`.
"""
from __future__ import annotations

from typing import Callable

import torch

from .accumulator import INT32_MAX, headroom_scales
from .qparams import weight_scales

_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound paper)


def channel_amax(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """max |w| per output channel (axis 0), or the tensor's max repeated per channel."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return amax if per_channel else amax.max().expand_as(amax).clone()


def channel_qmax(bits: int | torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The largest integer of each output channel's grid, shaped to broadcast against `weight`.

    `bits` is the layer's width, or one width per output channel (the overflow fix gives some
    channels 7 bits).
    """
    bits = torch.as_tensor(bits, dtype=torch.float32).expand(weight.shape[0])
    return (2.0 ** (bits - 1) - 1).reshape((-1,) + (1,) * (weight.dim() - 1))


def quantize_weight(weight: torch.Tensor, bits: int | torch.Tensor = 8, per_channel: bool = True,
                    bias_fill_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer weights, float32 scales per output channel), rounding to nearest (even).

    `bits`: one width, or one per output channel. `bias_fill_scale` (`bias_fit_min_scale`, for a
    layer with a quantized input) raises the scales of channels whose int32 bias plus sums of
    products would not fit int32 otherwise (accumulator.py).
    """
    bits_array = bits.numpy() if isinstance(bits, torch.Tensor) else bits
    scale = torch.from_numpy(weight_scales(channel_amax(weight, per_channel).numpy(), bits_array))
    qmax = channel_qmax(bits, weight)
    if bias_fill_scale is not None:
        scale = headroom_scales(weight, scale, qmax, bias_fill_scale)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_int = torch.clamp(torch.round(weight / scale.reshape(shape)), -qmax, qmax)
    return w_int.to(torch.int8), scale


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def adaround(forward_with: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
             weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, bits: int | torch.Tensor,
             inputs: torch.Tensor, target: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor] | None = None,
             iterations: int = 200, batch_size: int = 32, lr: float = 1e-2, reg: float = 0.01,
             warmup: float = 0.2, beta: tuple[float, float] = (20.0, 2.0), seed: int = 0) -> torch.Tensor:
    """Integer weights rounded to reconstruct `target` = act(float layer(float inputs)).

    `inputs` are the layer's inputs in the quantized model (upstream already int8), so the
    rounding also compensates upstream error (asymmetric reconstruction). Loss and schedule
    follow the paper: squared error summed over channels plus a regulariser, annealed from
    beta[0] to beta[1] after `warmup`, that drives every rounding to a hard 0 or 1.
    `bits`: one width, or one per output channel.
    """
    qmax = channel_qmax(bits, weight)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    s = scale.reshape(shape)
    w_floor = torch.floor(weight / s)
    rest = (weight / s - w_floor).clamp(0.0, 1.0)
    p = ((rest - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-4, 1 - 1e-4)
    v = torch.log(p / (1 - p)).clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = inputs.shape[0]
    act = act or (lambda t: t)
    start = int(warmup * iterations)
    for it in range(iterations):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        with torch.enable_grad():
            h = _rectified_sigmoid(v)
            w_soft = torch.clamp(w_floor + h, -qmax, qmax) * s
            out = act(forward_with(inputs[idx], w_soft, bias))
            rec = (out - target[idx]).pow(2).sum(dim=1).mean()
            if it >= start:
                b = beta[1] + (beta[0] - beta[1]) * (1 - (it - start) / max(1, iterations - start))
                rec = rec + reg * (1 - (2 * h - 1).abs().pow(b)).sum()
        opt.zero_grad()
        rec.backward()
        opt.step()
    with torch.no_grad():
        hard = (_rectified_sigmoid(v) >= 0.5).float()
        return torch.clamp(w_floor + hard, -qmax, qmax).to(torch.int8)


def rounding_flips(w_int: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> float:
    """Fraction of weights whose integer differs from nearest rounding (AdaRound's effect)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    nearest = torch.round(weight / scale.reshape(shape))
    return float((nearest != w_int.float()).float().mean())


def bias_fit_min_scale(bias: torch.Tensor, input_scale: float) -> torch.Tensor:
    """Per channel, the weight scale at which bias / (input_scale * w_scale) alone fills int32.

    A lower bound only: `quantize_weight` goes on to leave room for the sums of products too.
    """
    return (bias.detach().double().abs() / (float(input_scale) * INT32_MAX)).float()
