"""Affine quantization arithmetic: a float range -> (scale, zero point) on an integer grid.

Every other quant module goes through here, so the grid the observers pick, the grid the
fake-quant model simulates and the grid an emitter writes are one and the same. Scales are
rounded to float32 at creation: that is what every runtime stores, so simulation and
artifact multiply by the very same number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ACT_DTYPES = ("uint8", "int8")
_MIN_SCALE = 1e-8  # a scale must be positive
# An all-zero tensor gets the grid of [0, 1] rather than the smallest scale: a layer writing
# into a 1e-8 grid has a requantization multiplier (in_scale * w_scale / out_scale) in the
# thousands, which XNNPACK refuses (it needs < 256) and LiteRT then aborts while preparing it.
_DEAD_RANGE_HI = 1.0


def f32(value: float) -> float:
    """`value` rounded to the nearest float32, as a Python float."""
    return float(np.float32(value))


@dataclass(frozen=True)
class QParams:
    """A per-tensor affine grid: real = (q - zero_point) * scale, q in [qmin, qmax].

    `qmin`/`qmax` describe the integer container (uint8 [0, 255] or int8 [-128, 127] for 8
    bits; narrower for fewer bits). The same grid can be written in either 8-bit container;
    `as_dtype` converts without changing a single representable value.
    """

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def bits(self) -> int:
        return int(round(np.log2(self.qmax - self.qmin + 1)))

    @property
    def dtype(self) -> str:
        return "uint8" if self.qmin >= 0 else "int8"

    @property
    def lo(self) -> float:
        """Smallest representable real value."""
        return (self.qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        """Largest representable real value."""
        return (self.qmax - self.zero_point) * self.scale

    def as_dtype(self, dtype: str) -> "QParams":
        """The same grid in the uint8 or int8 container."""
        if dtype == self.dtype:
            return self
        shift = 1 << (self.bits - 1)
        if dtype == "int8":
            return QParams(self.scale, self.zero_point - shift, self.qmin - shift, self.qmax - shift)
        return QParams(self.scale, self.zero_point + shift, self.qmin + shift, self.qmax + shift)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integers as a runtime's QuantizeLinear computes them (round half to even)."""
        q = np.round(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, self.qmin, self.qmax)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        return ((self.quantize(x) - self.zero_point) * np.float32(self.scale)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax,
                "dtype": self.dtype, "lo": self.lo, "hi": self.hi}


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, (1 << bits) - 1


def qparams_for_range(lo: float, hi: float, bits: int = 8, symmetric: bool = False,
                      dtype: str = "uint8") -> QParams:
    """The grid that covers [lo, hi] (widened to include 0, so zero is exact).

    Asymmetric: the zero point is placed so the grid spans [lo, hi]. Symmetric: zero sits in
    the middle of the integer range; a tensor with lo >= 0 (after ReLU, softmax) uses the
    whole range for [0, hi] instead ("unsigned symmetric", as AIMET does), which keeps the
    zero point at the container's minimum so runtimes can drop the ReLU into the quantizer.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if lo == hi:  # all zero on the calibration set (a dead ReLU): any grid holds zero exactly
        hi = _DEAD_RANGE_HI
    qmin, qmax = unsigned_range(bits)
    if symmetric and lo < 0:
        amax = max(-lo, hi)
        half = 1 << (bits - 1)
        scale = f32(max(amax / (half - 1), _MIN_SCALE))
        return QParams(scale, half, qmin, qmax).as_dtype(dtype)
    scale = f32(max((hi - lo) / (qmax - qmin), _MIN_SCALE))
    zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(scale, zero_point, qmin, qmax).as_dtype(dtype)


def weight_scales(amax: np.ndarray, bits: "int | np.ndarray") -> np.ndarray:
    """Symmetric per-channel weight scales (float32) for channel magnitudes `amax`.

    The grid is [-(2^(b-1)-1), 2^(b-1)-1] (narrow range: -128 is never used, as runtimes
    and TFLite expect for int8 weights). `bits` is one width or one per channel.
    """
    qmax = 2.0 ** (np.asarray(bits, np.float64) - 1) - 1
    amax = np.asarray(amax, np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return np.maximum(scale, 1e-12).astype(np.float32)
