"""Parity and accuracy metrics. Knows nothing about formats: it compares arrays.

A converter produces a runner (NCHW float32 batch -> logits); this module judges the
runner's logits against the canonical PyTorch model's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class ParityMetrics:
    """How closely an artifact's logits follow the reference's on the golden inputs."""

    max_abs: float
    mean_abs: float
    max_rel_abs: float  # max_abs / max |reference|: scale-free
    cosine: float  # worst per-sample cosine similarity
    sqnr_db: float  # signal-to-quantization-noise ratio over the whole batch
    top1_agreement: float  # fraction of samples whose arg-max matches
    top5_overlap: float  # mean |top5(ref) & top5(out)| / 5
    count: int

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 9) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}


def compare(reference: np.ndarray, output: np.ndarray) -> ParityMetrics:
    """Compare two (N, classes) logit arrays."""
    ref = np.asarray(reference, dtype=np.float64).reshape(reference.shape[0], -1)
    out = np.asarray(output, dtype=np.float64).reshape(output.shape[0], -1)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from reference {ref.shape}")
    diff = np.abs(ref - out)
    if not np.all(np.isfinite(out)):
        nan = float("nan")
        return ParityMetrics(float("inf"), float("inf"), float("inf"), nan, float("-inf"), 0.0, 0.0, len(ref))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    dots = np.sum(ref * out, axis=1)
    cos = np.where(norms > 0, dots / np.maximum(norms, 1e-300), np.where(np.all(diff == 0, axis=1), 1.0, 0.0))
    noise = float(np.sum((ref - out) ** 2))
    signal = float(np.sum(ref ** 2))
    sqnr = float("inf") if noise == 0 else 10.0 * math.log10(max(signal, 1e-300) / noise)
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_out = np.argsort(-out, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_out)])
    scale = float(np.max(np.abs(ref))) or 1.0
    return ParityMetrics(
        max_abs=float(diff.max()), mean_abs=float(diff.mean()), max_rel_abs=float(diff.max()) / scale,
        cosine=float(cos.min()), sqnr_db=sqnr,
        top1_agreement=float(np.mean(top_ref[:, 0] == top_out[:, 0])), top5_overlap=float(overlap),
        count=int(ref.shape[0]),
    )


@dataclass(frozen=True)
class ParityThresholds:
    """Pass/fail bounds for one precision; the numbers live in quant_configs/, not here."""

    min_cosine: float
    max_rel_abs: float
    min_sqnr_db: float
    min_top1_agreement: float

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "ParityThresholds":
        return cls(**{k: float(data[k]) for k in ("min_cosine", "max_rel_abs", "min_sqnr_db", "min_top1_agreement")})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def failures(self, metrics: ParityMetrics) -> list[str]:
        """Human-readable reasons `metrics` misses these bounds (empty when it passes)."""
        fails = []
        if not metrics.cosine >= self.min_cosine:
            fails.append(f"cosine {metrics.cosine:.6f} < {self.min_cosine}")
        if not metrics.max_rel_abs <= self.max_rel_abs:
            fails.append(f"max rel abs {metrics.max_rel_abs:.3g} > {self.max_rel_abs}")
        if not metrics.sqnr_db >= self.min_sqnr_db:
            fails.append(f"SQNR {metrics.sqnr_db:.1f} dB < {self.min_sqnr_db}")
        if not metrics.top1_agreement >= self.min_top1_agreement:
            fails.append(f"top-1 agreement {metrics.top1_agreement:.3f} < {self.min_top1_agreement}")
        return fails


# ---- accuracy on labeled images -------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyResult:
    """Top-1/top-5 of the reference and the artifact on the same images, and the paired drop.

    The drop's 95% interval is paired (same images for both): it comes from the per-image
    differences in correctness, so a drop is always reported with its noise. McNemar's exact
    test on the discordant images says whether the two differ at all.
    """

    count: int
    reference_top1: float  # percent
    reference_top5: float
    top1: float
    top5: float
    drop_top1: float  # points: reference - artifact
    drop_top1_ci95: tuple[float, float]
    drop_top5: float
    only_reference_right: int  # discordant pairs
    only_artifact_right: int
    mcnemar_p: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drop_top1_ci95"] = list(self.drop_top1_ci95)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in data.items()}


def _topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return np.any(top == labels[:, None], axis=1)


def _mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact binomial test of b vs c discordant pairs (p = 1 when none)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def correct_flags(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (top-1 correct, top-5 correct): the per-image record every accuracy figure comes from.

    Row-wise, so computing it chunk by chunk gives the same flags as on the whole set.
    """
    labels = np.asarray(labels, dtype=np.int64)
    return _topk_correct(logits, labels, 1), _topk_correct(logits, labels, 5)


def accuracy_from_records(reference_top1: np.ndarray, reference_top5: np.ndarray, top1: np.ndarray,
                          top5: np.ndarray) -> AccuracyResult:
    """Paired accuracy from per-image correctness records (same images, same order, both sides)."""
    ref1, out1 = np.asarray(reference_top1, dtype=bool), np.asarray(top1, dtype=bool)
    ref5, out5 = np.asarray(reference_top5, dtype=bool), np.asarray(top5, dtype=bool)
    if not ref1.shape == out1.shape == ref5.shape == out5.shape:
        raise ValueError(f"records of different lengths: reference {ref1.shape}, artifact {out1.shape}")
    n = len(ref1)
    diff = ref1.astype(np.float64) - out1.astype(np.float64)
    mean = float(diff.mean())
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else float("inf")
    b, c = int(np.sum(ref1 & ~out1)), int(np.sum(~ref1 & out1))
    return AccuracyResult(
        count=n, reference_top1=100.0 * ref1.mean(), reference_top5=100.0 * ref5.mean(),
        top1=100.0 * out1.mean(), top5=100.0 * out5.mean(), drop_top1=100.0 * mean,
        drop_top1_ci95=(100.0 * (mean - half), 100.0 * (mean + half)),
        drop_top5=100.0 * float(ref5.mean() - out5.mean()),
        only_reference_right=b, only_artifact_right=c, mcnemar_p=_mcnemar_exact(b, c),
    )


def accuracy(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> AccuracyResult:
    """Paired accuracy comparison of an artifact against the reference on labeled images."""
    return accuracy_from_records(*correct_flags(reference_logits, labels), *correct_flags(logits, labels))
