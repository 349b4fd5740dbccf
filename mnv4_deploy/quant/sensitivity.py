"""Which units hurt: the model-output SQNR with one unit switched at a time.

Two views, both against the float (equalized) model on the same images:
- "all_but_one": everything int8 except the unit; the gain over all-int8 says how much
  keeping that unit in float would recover (what fallback needs);
- "one_at_a_time": only the unit int8; its SQNR says how much noise it adds on its own.
The ranking is most harmful first in both.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UsageError
from ..validate import compare
from .plan import QuantPlan

MODES = ("all_but_one", "one_at_a_time")


@dataclass(frozen=True)
class Sensitivity:
    """One unit's effect on the model output."""

    unit: str
    op: str
    sqnr_db: float  # output SQNR vs float in this unit's configuration
    gain_db: float  # all_but_one: SQNR gained by keeping it float; one_at_a_time: -SQNR

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return round(v, 3) if math.isfinite(v) else None
        return {"unit": self.unit, "op": self.op, "sqnr_db": num(self.sqnr_db), "gain_db": num(self.gain_db)}


def _outputs(model: torch.nn.Module, data: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(data[i:i + batch_size]).numpy() for i in range(0, data.shape[0], batch_size)])


def output_sqnr(plan: QuantPlan, data: np.ndarray, float_units: list[str] | None = None,
                batch_size: int = 64) -> float:
    """SQNR (dB) of the fake-quant model's output against the float model's."""
    x = torch.from_numpy(np.ascontiguousarray(data))
    reference = _outputs(plan.float_model(), x, batch_size)
    return compare(reference, _outputs(plan.fake_quant_model(float_units), x, batch_size)).sqnr_db


def layer_sensitivity(plan: QuantPlan, data: np.ndarray, mode: str = "all_but_one",
                      units: list[str] | None = None, batch_size: int = 64,
                      log: Callable[[str], None] = lambda _: None) -> list[Sensitivity]:
    """Rank units (default: every unit not already float) by how much they hurt the output."""
    if mode not in MODES:
        raise UsageError(f"unknown sensitivity mode {mode!r}", f"use one of {', '.join(MODES)}")
    x = torch.from_numpy(np.ascontiguousarray(data))
    candidates = [u for u in (units or plan.units) if u not in plan.float_units]
    reference = _outputs(plan.float_model(), x, batch_size)
    model = plan.fake_quant_model()
    base = compare(reference, _outputs(model, x, batch_size)).sqnr_db
    t0 = time.time()
    results = []
    for unit in candidates:
        if mode == "all_but_one":
            float_units = set(plan.float_units) | {unit}
        else:
            float_units = set(plan.units) - {unit}
        plan.reconfigure(model, float_units)
        sqnr = compare(reference, _outputs(model, x, batch_size)).sqnr_db
        gain = sqnr - base if mode == "all_but_one" else -sqnr
        results.append(Sensitivity(unit, plan.unit_op(unit), sqnr, gain))
    results.sort(key=lambda s: s.gain_db if math.isfinite(s.gain_db) else math.inf, reverse=True)
    log(f"sensitivity ({mode}) of {len(candidates)} units on {x.shape[0]} images in {time.time() - t0:.1f}s; "
        f"all-int8 output SQNR {base:.1f} dB; worst: "
        + ", ".join(f"{s.unit} ({s.gain_db:+.1f} dB)" for s in results[:3]))
    return results
