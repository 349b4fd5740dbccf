"""Accuracy-aware fallback: keep the most sensitive units in float until the drop fits.

The caller supplies how a plan is judged (`measure(plan) -> drop in points`, e.g. top-1 on
a labeled set through the fake-quant model or the real artifact); the engine supplies the
order (sensitivity ranking). Units are tried one by one, most harmful first; a unit stays
float only if that lowers the measured drop (SQNR ranks are a proxy; the measure decides),
until the drop is within `max_drop` or `max_layers` units are float. Every try is recorded
with its reason, so the report says what left int8, what was tried, and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UsageError
from .plan import QuantPlan
from .sensitivity import Sensitivity, layer_sensitivity


@dataclass(frozen=True)
class FallbackStep:
    """One unit kept in float, and what it did to the drop."""

    unit: str
    op: str
    rank: int  # position in the sensitivity ranking (0 = most harmful)
    gain_db: float  # its sensitivity score
    drop_before: float
    drop_after: float
    kept: bool = True  # False: tried, but it did not lower the drop, so it stayed int8

    @property
    def reason(self) -> str:
        verdict = "kept in float" if self.kept else "left int8 (no improvement)"
        return (f"rank {self.rank + 1} by sensitivity ({self.gain_db:+.1f} dB); "
                f"drop {self.drop_before:.2f} -> {self.drop_after:.2f} pt: {verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "op": self.op, "rank": self.rank, "gain_db": round(self.gain_db, 3),
                "drop_before": round(self.drop_before, 4), "drop_after": round(self.drop_after, 4),
                "kept": self.kept, "reason": self.reason}


@dataclass
class FallbackResult:
    """The chosen plan, what was kept in float, and whether the budget was met."""

    plan: QuantPlan
    initial_drop: float
    final_drop: float
    max_drop: float
    met: bool
    steps: list[FallbackStep] = field(default_factory=list)  # every try, kept or not

    @property
    def kept_float(self) -> list[str]:
        return [s.unit for s in self.steps if s.kept]

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "initial_drop": round(self.initial_drop, 4),
                "final_drop": round(self.final_drop, 4), "met": self.met, "kept_float": self.kept_float,
                "tries": [s.to_dict() for s in self.steps]}


def accuracy_fallback(plan: QuantPlan, measure: Callable[[QuantPlan], float], max_drop: float,
                      max_layers: int | None = None, ranking: Sequence[Sensitivity] | None = None,
                      data: np.ndarray | None = None, max_tries: int | None = None,
                      log: Callable[[str], None] = print) -> FallbackResult:
    """Keep units in float, most sensitive first, until `measure(plan) <= max_drop`.

    ranking: a precomputed `layer_sensitivity` list; otherwise it is computed on `data`.
    max_layers: at most this many units go float (default: the recipe's fallback.max_layers).
    max_tries: at most this many candidates are measured (default: 4 * max_layers).
    """
    if max_drop < 0:
        raise UsageError(f"max drop {max_drop} must not be negative")
    limit = plan.settings.fallback_max_layers if max_layers is None else max_layers
    tries = 4 * limit if max_tries is None else max_tries
    if ranking is None:
        if data is None:
            raise UsageError("accuracy fallback needs a sensitivity ranking or data to compute one")
        ranking = layer_sensitivity(plan, data, log=log)
    drop = initial = float(measure(plan))
    result = FallbackResult(plan, initial, initial, max_drop, initial <= max_drop)
    log(f"fallback: drop {initial:.2f} pt with everything int8 (budget {max_drop} pt)")
    for rank, sens in enumerate(ranking):
        if drop <= max_drop or len(result.kept_float) >= limit or len(result.steps) >= tries:
            break
        if sens.unit in plan.float_units:
            continue
        candidate = plan.with_float([sens.unit])
        new_drop = float(measure(candidate))
        step = FallbackStep(sens.unit, sens.op, rank, sens.gain_db, drop, new_drop, kept=new_drop < drop)
        result.steps.append(step)
        log(f"fallback: {sens.unit} ({sens.op}): {step.reason}")
        if step.kept:
            plan, drop = candidate, new_drop
    result.plan, result.final_drop, result.met = plan, drop, drop <= max_drop
    if not result.met:
        log(f"fallback: drop {drop:.2f} pt still over {max_drop} pt with {len(result.kept_float)} float units "
            f"(limit {limit}, {len(result.steps)} tried)")
    return result
