"""Activation range estimators: which [lo, hi] a tensor's int8 grid should cover.

Min-max wastes resolution on rare outliers; the other estimators clip them, each by its
own criterion (a percentile of the values, TensorRT's histogram KL divergence, or the
expected quantization MSE). All statistics stream: a first pass records min/max, a second
fills fixed-edge histograms, so 300 images at 224 never sit in memory at once. The pure
functions (`percentile_range`, `entropy_threshold`, `mse_range`) work on histograms alone
and are tested on known distributions.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .qparams import qparams_for_range

ESTIMATORS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
_CHUNK = 1 << 23  # histc counts in float32: keep each call's element count exact (< 2**24)


class RangeObserver:
    """Streaming statistics of one tensor over calibration batches.

    Pass 1 (`update_minmax`) for every estimator; pass 2 (`update_histogram`) only when
    `needs_histogram`. Exact zeros (half of a ReLU output) are counted apart: they are
    always exactly representable, and folding them into a bin would skew the MSE search.
    """

    def __init__(self, estimator: str = "minmax", bits: int = 8, percentile: float = 99.99,
                 bins: int = DEFAULT_BINS):
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
        self.estimator, self.bits, self.percentile, self.bins = estimator, bits, percentile, bins
        self.min, self.max = math.inf, -math.inf
        self.count = 0
        self.hist: np.ndarray | None = None  # counts over [min, max], zeros excluded
        self.abs_hist: np.ndarray | None = None  # counts of |x| over [0, amax], zeros excluded
        self.zeros = 0

    @property
    def needs_histogram(self) -> bool:
        return self.estimator != "minmax"

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def seen(self) -> bool:
        return self.count > 0

    def update_minmax(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.numel()

    def update_histogram(self, x: torch.Tensor) -> None:
        if self.hist is None:
            self.hist = np.zeros(self.bins, np.float64)
            self.abs_hist = np.zeros(self.bins, np.float64)
        flat = x.detach().reshape(-1).float()
        lo, hi = self.min, self.max if self.max > self.min else self.min + 1e-12
        amax = self.amax or 1e-12
        for chunk in flat.split(_CHUNK):
            nz = chunk[chunk != 0]
            self.zeros += chunk.numel() - nz.numel()
            if nz.numel():
                self.hist += torch.histc(nz, self.bins, lo, hi).double().numpy()
                self.abs_hist += torch.histc(nz.abs(), self.bins, 0.0, amax).double().numpy()

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        """The [lo, hi] this estimator picks (before widening to include zero)."""
        if not self.seen:
            return 0.0, 0.0
        lo, hi = self.min, self.max
        if self.estimator == "minmax" or hi <= lo or self.hist is None:
            return (-self.amax, self.amax) if symmetric and lo < 0 else (lo, hi)
        edges = np.linspace(lo, hi, self.bins + 1)
        abs_edges = np.linspace(0.0, self.amax, self.bins + 1)
        signed = lo < 0
        if self.estimator == "percentile":
            if symmetric and signed:
                t = percentile_range(self.abs_hist, abs_edges, self.percentile, zeros=self.zeros)[1]
                return -t, t
            plo, phi = percentile_range(self.hist, edges, self.percentile, zeros=self.zeros)
            return (lo if not signed else plo), phi  # a one-sided tensor keeps its bottom (zero)
        if self.estimator == "entropy":
            levels = 1 << (self.bits - 1) if signed else 1 << self.bits
            t = entropy_threshold(self.abs_hist, abs_edges, levels)
            return (-t, t) if symmetric and signed else (max(lo, -t), min(hi, t))
        return mse_range(self.hist, edges, self.bits, symmetric, zeros=self.zeros)


def percentile_range(hist: np.ndarray, edges: np.ndarray, pct: float, zeros: float = 0.0) -> tuple[float, float]:
    """The (100-pct)th and pct-th percentiles of a histogram (linear within a bin).

    Exact zeros (`zeros`) count as values at 0.
    """
    hist = np.asarray(hist, np.float64).copy()
    if zeros and edges[0] <= 0 <= edges[-1]:
        idx = min(int(np.searchsorted(edges, 0.0, side="right")) - 1, len(hist) - 1)
        hist[max(idx, 0)] += zeros
    total = hist.sum()
    if total <= 0:
        return float(edges[0]), float(edges[-1])
    cdf = np.concatenate([[0.0], np.cumsum(hist)]) / total

    def at(q: float) -> float:
        return float(np.interp(q, cdf, edges))

    return at(1.0 - pct / 100.0), at(pct / 100.0)


def entropy_threshold(abs_hist: np.ndarray, abs_edges: np.ndarray, levels: int = 128,
                      max_candidates: int = 256) -> float:
    """TensorRT's calibration: the |x| threshold whose `levels`-level quantized histogram
    diverges least (KL) from the clipped reference histogram.
    """
    hist = np.asarray(abs_hist, np.float64)
    nbins = len(hist)
    if nbins <= levels or hist.sum() <= 0:
        return float(abs_edges[-1])
    stride = max(1, (nbins - levels) // max_candidates)
    best_i, best_kl = nbins, math.inf
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    for i in range(levels, nbins + 1, stride):
        head = hist[:i]
        ref = head.copy()
        ref[-1] += tail[i]
        group = (np.arange(i) * levels) // i
        nonzero = head > 0
        sums = np.bincount(group, weights=head, minlength=levels)
        counts = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        expanded = np.where(nonzero, sums[group] / np.maximum(counts[group], 1.0), 0.0)
        p = ref / ref.sum()
        q_total = expanded.sum()
        if q_total <= 0:
            continue
        q = expanded / q_total
        mask = p > 0
        if np.any(q[mask] == 0):
            continue  # the reference has mass where the quantized histogram has none
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(abs_edges[best_i])


def _expected_error(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, bits: int,
                    symmetric: bool) -> float:
    """Expected squared error of quantizing the histogram onto the grid for [lo, hi].

    Values inside the grid's span carry uniform rounding noise (scale^2 / 12); values
    outside are clipped to the nearest end.
    """
    qp = qparams_for_range(lo, hi, bits, symmetric)
    glo, ghi = qp.lo, qp.hi
    clipped = np.where(centers < glo, glo - centers, np.where(centers > ghi, centers - ghi, 0.0))
    inside = clipped == 0
    return float(np.sum(counts * clipped ** 2) + np.sum(counts[inside]) * qp.scale ** 2 / 12.0)


def mse_range(hist: np.ndarray, edges: np.ndarray, bits: int = 8, symmetric: bool = False,
              zeros: float = 0.0, steps: int = 100) -> tuple[float, float]:
    """The clipping range minimizing the expected quantization MSE of the histogram.

    One-sided tensors (and symmetric grids) search one magnitude; signed asymmetric ones
    alternate between the two ends (two rounds of coordinate descent). Exact zeros are
    always representable and cost nothing, so `zeros` does not enter the error.
    """
    del zeros  # documented above: zeros add no error on any zero-exact grid
    hist = np.asarray(hist, np.float64)
    centers = (edges[:-1] + edges[1:]) / 2.0
    lo0, hi0 = float(edges[0]), float(edges[-1])
    fracs = np.linspace(1.0 / steps, 1.0, steps)
    if lo0 >= 0 or symmetric:
        amax = max(abs(lo0), abs(hi0))
        signed = lo0 < 0

        def err(t: float) -> float:
            return _expected_error(centers, hist, -t if signed else 0.0, t, bits, symmetric)

        best = min(fracs, key=lambda f: err(f * amax)) * amax
        return (-best if signed else max(lo0, 0.0)), best
    lo, hi = lo0, hi0
    for _ in range(2):
        hi = min(fracs * hi0, key=lambda h: _expected_error(centers, hist, lo, h, bits, False))
        lo = min(fracs * lo0, key=lambda l: _expected_error(centers, hist, l, hi, bits, False))
    return float(lo), float(hi)


def estimate_range(samples: np.ndarray | torch.Tensor | Sequence[np.ndarray], estimator: str = "minmax",
                   bits: int = 8, symmetric: bool = False, percentile: float = 99.99,
                   bins: int = DEFAULT_BINS) -> tuple[float, float]:
    """Run an observer over `samples` (one array or a sequence of batches): [lo, hi]."""
    batches = samples if isinstance(samples, (list, tuple)) else [samples]
    tensors = [torch.as_tensor(np.asarray(b, np.float32)) for b in batches]
    obs = RangeObserver(estimator, bits, percentile, bins)
    for t in tensors:
        obs.update_minmax(t)
    if obs.needs_histogram:
        for t in tensors:
            obs.update_histogram(t)
    return obs.range(symmetric)
