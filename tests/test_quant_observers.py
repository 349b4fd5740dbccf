"""Range estimators and grid arithmetic on distributions whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mnv4_deploy.quant import ESTIMATORS, RangeObserver, estimate_range, qparams_for_range

N = 400_000


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return {
        "gauss": rng.standard_normal(N).astype(np.float32),
        "laplace": rng.laplace(size=N).astype(np.float32),
        "relu": np.maximum(rng.standard_normal(N), 0).astype(np.float32),
    }


def test_minmax_is_the_observed_range(samples):
    x = samples["gauss"]
    assert estimate_range(x, "minmax") == pytest.approx((float(x.min()), float(x.max())))


def test_percentile_on_a_gaussian_matches_numpy(samples):
    x = samples["gauss"]
    lo, hi = estimate_range(x, "percentile", percentile=99.9)
    ref_lo, ref_hi = np.percentile(x, [0.1, 99.9])
    # 2048 bins over ~9.4 sigma: one bin is 0.005 sigma
    assert lo == pytest.approx(ref_lo, abs=0.01) and hi == pytest.approx(ref_hi, abs=0.01)
    assert hi == pytest.approx(3.09, abs=0.05)  # the 99.9th percentile of N(0, 1)


def test_percentile_symmetric_uses_magnitudes(samples):
    x = samples["gauss"]
    lo, hi = estimate_range(x, "percentile", percentile=99.9, symmetric=True)
    assert lo == -hi and hi == pytest.approx(np.percentile(np.abs(x), 99.9), abs=0.01)


def test_mse_clips_heavy_tails_near_the_analytic_optimum(samples):
    x = samples["laplace"]
    lo, hi = estimate_range(x, "mse", symmetric=True)
    assert hi < 0.8 * np.abs(x).max()
    # Banner et al. (ACIQ): the MSE-optimal 8-bit clip of Laplace(b=1) is 9.89 b
    assert hi == pytest.approx(9.89, rel=0.1)


def test_entropy_clips_heavy_tails_and_keeps_gaussian_core(samples):
    lap = samples["laplace"]
    _, t_lap = estimate_range(lap, "entropy", symmetric=True)
    assert t_lap < 0.8 * np.abs(lap).max()
    _, t_gauss = estimate_range(samples["gauss"], "entropy", symmetric=True)
    assert 3.0 < t_gauss <= np.abs(samples["gauss"]).max()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_sided_tensors_keep_zero_as_the_bottom(samples, estimator):
    lo, hi = estimate_range(samples["relu"], estimator, percentile=99.9)
    assert lo == 0.0 and 2.5 < hi <= samples["relu"].max()
    q = qparams_for_range(lo, hi)
    assert q.zero_point == q.qmin == 0  # a runtime can drop the ReLU into this quantizer


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_streaming_over_batches_equals_one_pass(samples, estimator):
    x = samples["gauss"]
    whole = estimate_range(x, estimator, percentile=99.9)
    parts = estimate_range([x[: N // 3], x[N // 3:]], estimator, percentile=99.9)
    assert parts == pytest.approx(whole, rel=1e-6, abs=1e-6)


def test_histogram_counts_stay_exact_beyond_float32_precision():
    obs = RangeObserver("percentile")
    big = torch.zeros(3 * (1 << 23) + 5)
    big[:10] = torch.linspace(-1, 1, 10)
    obs.update_minmax(big)
    obs.update_histogram(big)
    assert obs.zeros == big.numel() - 10 and obs.hist.sum() == 10  # no float32 count rounding


def test_grids_make_zero_exact_and_convert_between_containers():
    q = qparams_for_range(-1.3, 2.9)
    assert q.fake_quantize(np.zeros(1))[0] == 0.0
    assert q.lo <= -1.3 + q.scale and q.hi >= 2.9 - q.scale
    s8 = q.as_dtype("int8")
    assert (s8.qmin, s8.qmax) == (-128, 127) and s8.as_dtype("uint8") == q
    x = np.linspace(-2, 3, 1001, dtype=np.float32)
    assert np.array_equal(q.fake_quantize(x), s8.fake_quantize(x))
    sym = qparams_for_range(-1.0, 3.0, symmetric=True, dtype="int8")
    assert sym.zero_point == 0 and sym.scale == pytest.approx(3.0 / 127)
    unsigned = qparams_for_range(0.0, 3.0, symmetric=True, dtype="int8")
    assert unsigned.zero_point == unsigned.qmin  # unsigned symmetric: the whole grid for [0, 3]
    assert qparams_for_range(0.0, 3.0, bits=6).qmax == 63
