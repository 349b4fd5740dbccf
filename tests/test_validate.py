"""Parity and accuracy metrics on arrays with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mnv4_deploy.validate import ParityThresholds, accuracy, compare


def test_identical_logits_are_perfect():
    ref = np.random.default_rng(0).normal(size=(4, 10))
    m = compare(ref, ref.copy())
    assert m.max_abs == 0 and m.cosine == pytest.approx(1.0) and math.isinf(m.sqnr_db)
    assert m.top1_agreement == 1.0 and m.top5_overlap == 1.0


def test_known_noise_gives_known_sqnr_and_cosine():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(64, 1000))
    noisy = ref + rng.normal(scale=0.1, size=ref.shape)  # noise power 1% of signal: 20 dB
    m = compare(ref, noisy)
    assert m.sqnr_db == pytest.approx(20.0, abs=0.3)
    assert m.cosine == pytest.approx(1 / math.sqrt(1.01), abs=2e-3)
    assert m.max_rel_abs == pytest.approx(m.max_abs / np.abs(ref).max())


def test_wrong_layout_is_caught_by_every_bound():
    ref = np.random.default_rng(2).normal(size=(8, 100))
    shuffled = ref[:, ::-1].copy()  # e.g. a channel order mix-up
    fails = ParityThresholds(0.99, 0.1, 20.0, 0.9).failures(compare(ref, shuffled))
    assert len(fails) == 4


def test_nan_output_fails_instead_of_passing():
    ref = np.ones((2, 5))
    out = ref.copy()
    out[0, 0] = np.nan
    assert ParityThresholds(0.9, 1.0, 0.0, 0.0).failures(compare(ref, out))


def test_paired_accuracy_drop_interval_and_mcnemar():
    labels = np.arange(200) % 10
    ref = np.eye(10)[labels] * 5.0  # always right
    art = ref.copy()
    art[:10] = np.eye(10)[(labels[:10] + 1) % 10] * 5.0  # wrong on 10 images: -5 points
    acc = accuracy(ref, art, labels)
    assert acc.reference_top1 == 100.0 and acc.top1 == 95.0 and acc.drop_top1 == pytest.approx(5.0)
    lo, hi = acc.drop_top1_ci95
    assert lo < 5.0 < hi and lo > 0  # significant, with its noise
    assert acc.only_reference_right == 10 and acc.only_artifact_right == 0
    assert acc.mcnemar_p == pytest.approx(2 / 2 ** 10)
    same = accuracy(ref, ref, labels)
    assert same.drop_top1 == 0 and same.mcnemar_p == 1.0 and same.drop_top1_ci95 == (0.0, 0.0)
