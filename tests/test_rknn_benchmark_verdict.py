"""benchmarks/rknn_imagenet.py's judgement of "no worse than Rockchip's quantizer", image by image.

At 800 photos a top-1 point estimate 1-3 images apart is noise; the benchmark judges by paired
McNemar tests on top-1 hits and on flips (float's answer changed). These tests pin that logic on
constructed hit vectors, so a verdict in docs/accuracy.md cannot come from a miscount.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rknn_imagenet  # noqa: E402


def _hits(n: int, wrong: list[int]) -> np.ndarray:
    hits = np.ones(n, bool)
    hits[wrong] = False
    return hits


def test_flips_count_where_each_model_leaves_float():
    float_hits = _hits(10, [0, 1])
    ours = _hits(10, [0, 1, 2])          # changes float on image 2
    theirs = _hits(10, [1, 3, 4])        # changes float on images 0 (now right), 3, 4
    v = rknn_imagenet.versus({"top1_hits": ours}, {"top1_hits": theirs}, float_hits)
    assert (v["only_ours_right"], v["only_theirs_right"]) == (2, 2)  # 3, 4 / 0, 2
    assert (v["only_ours_flips"], v["only_theirs_flips"]) == (1, 3)
    assert "only_ours_flips" not in rknn_imagenet.versus({"top1_hits": ours}, {"top1_hits": theirs})


def _row(model: str, ours: np.ndarray, theirs: np.ndarray, float_hits: np.ndarray) -> dict:
    return {"model": model, "vs_ours": rknn_imagenet.versus({"top1_hits": ours}, {"top1_hits": theirs}, float_hits)}


def test_paired_verdict_calls_significant_losses_and_gains():
    n = 800
    float_hits = _hits(n, list(range(100)))
    ours = _hits(n, list(range(100)) + [100, 101])                    # flips 2
    level = _hits(n, list(range(2, 100)) + list(range(102, 106)))      # 4 / 4 right only for one; flips 6 vs 2: p 0.29
    many_flips = _hits(n, list(range(20, 100)) + list(range(200, 220)))  # 20 fixed, 20 broken: 40 flips
    better = _hits(n, list(range(30, 100)))                            # right on 30 more than ours, 30 flips
    verdict = rknn_imagenet.paired_verdict([_row("level", ours, level, float_hits)])
    assert "no worse than any of the 1" in verdict[0] and "changes no fewer" in verdict[0]
    verdict = rknn_imagenet.paired_verdict([_row("many-flips", ours, many_flips, float_hits)])
    assert "no worse" in verdict[0] and "fewer of float's answers than many-flips" in verdict[0]
    verdict = rknn_imagenet.paired_verdict([_row("better", ours, better, float_hits),
                                            _row("many-flips", ours, many_flips, float_hits)])
    assert verdict[0].count("WORSE than better") == 1 and "many-flips" in verdict[0]
