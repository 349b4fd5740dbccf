"""What two spellings of one int8 plan can promise each other, on every CPU: the same integers, except at ties.

Two computation paths for the same quantizer (`x / scale` in QuantOps, `x * (1 / scale)` in PyTorch's
quantized_decomposed ops; a frozen weight tensor against a live one, which the convolution may lay
out and accumulate in another order) agree exactly everywhere except where `x / scale` sits on a
rounding tie (k + 0.5) to within a few ulps: there one path rounds up and the other down. A tie
early in the network then moves later values by a step or so. Which values sit on a tie depends
on the kernels' summation order, so it differs between CPU classes (an AVX2-only host showed 1-10
of 160 logits a step apart where an AVX-512 VNNI host showed none). So these checks assert:

- at every quantization point, fed the same tensor, the two quantizers' integer codes are equal,
  or one step apart exactly where the value is within `TIE_TOLERANCE` of a tie;
- end to end, the two models agree on every image's top-1 and at cosine >= `MIN_COSINE` per image.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mnv4_deploy.quant.modules import FakeQuant
from mnv4_deploy.quant.qparams import QParams

TIE_TOLERANCE = 1e-4  # in code units: x / scale and x * (1 / scale) differ by an ulp, well below this
MIN_COSINE = 0.9999


def point_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[QParams, torch.Tensor]]:
    """(grid, input tensor) of every enabled quantizer of a fake-quant model, on one forward pass."""
    seen: list[tuple[QParams, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod.qparams, args[0].detach().clone())))
             for m in model.modules() if isinstance(m, FakeQuant) and m.qparams is not None]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def codes(fake_quantized: torch.Tensor, q: QParams) -> np.ndarray:
    return np.rint(fake_quantized.numpy().astype(np.float64) / q.scale) + q.zero_point


def assert_codes_equal_but_ties(points: list[tuple[QParams, torch.Tensor]],
                                quantize_a: Callable[[torch.Tensor, QParams], torch.Tensor],
                                quantize_b: Callable[[torch.Tensor, QParams], torch.Tensor]) -> int:
    """Both quantizers give the same codes on every captured tensor, except one step apart at ties.

    Returns how many codes differed (all of them at ties).
    """
    differing = 0
    for q, t in points:
        a, b = codes(quantize_a(t, q), q), codes(quantize_b(t, q), q)
        apart = a != b
        if apart.any():
            ratio = t.numpy().astype(np.float64)[apart] / q.scale
            distance_to_tie = np.abs(ratio - np.floor(ratio) - 0.5)
            assert np.abs(a - b).max() <= 1, f"codes {np.abs(a - b).max()} steps apart on grid {q}"
            assert distance_to_tie.max() < TIE_TOLERANCE, \
                f"codes differ off a rounding tie (distance {distance_to_tie.max():.3g}) on grid {q}"
            differing += int(apart.sum())
    return differing


def assert_same_model_but_ties(actual: np.ndarray, expected: np.ndarray) -> None:
    """Two spellings of one plan end to end: same top-1 on every image, per-image cosine >= MIN_COSINE."""
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.argmax(1), expected.argmax(1))
    cosine = (actual * expected).sum(1) / (np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= MIN_COSINE, f"per-image cosine {cosine.min():.6f} < {MIN_COSINE}"
