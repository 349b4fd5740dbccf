"""The quantization settings a recipe asks for, checked against what the engine can do.

`recipes.load_recipe` checks types and names; this adds the engine's own limits (bit
widths it can simulate, symmetric weights only) and refuses the rest with a message,
rather than quietly doing something else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import UsageError
from ..recipes import Recipe, load_recipe
from ..options import OVERFLOW_FIX_MODES
from .qparams import ACT_DTYPES

DEFAULT_BATCH = 32
DEFAULT_CORRECTION = 64
DEFAULT_ADAROUND_ITERS = 200


@dataclass(frozen=True)
class QuantSettings:
    """Everything `build_plan` reads from a recipe, with defaults filled in."""

    recipe: str = "default"
    weight_bits: int = 8
    dense_bits: int = 8  # non-depthwise layers (run as GEMM by CPU runtimes)
    per_channel: bool = True
    rounding: str = "nearest"
    adaround_iterations: int = DEFAULT_ADAROUND_ITERS
    act_bits: int = 8
    estimator: str = "percentile"
    percentile: float = 99.99
    symmetric: bool = False
    act_dtype: str = "uint8"
    quantize_output: bool = False
    equalization: bool = True
    bias_correction: bool = True
    batch_size: int = DEFAULT_BATCH
    correction_size: int = DEFAULT_CORRECTION
    fallback_max_layers: int = 8
    overflow_fix: str = "off"  # auto | all | off: 7-bit GEMM channels against x86 int16 saturation (overflow.py)

    @classmethod
    def from_recipe(cls, recipe: Recipe | str | Mapping[str, Any] = "default") -> "QuantSettings":
        if isinstance(recipe, str):
            recipe = load_recipe(recipe)
        raw = recipe.raw if isinstance(recipe, Recipe) else recipe
        name = recipe.name if isinstance(recipe, Recipe) else str(raw.get("name", "custom"))
        w, a = raw.get("weights", {}), raw.get("activations", {})
        cal = raw.get("calibration", {})
        settings = cls(
            recipe=name,
            weight_bits=int(w.get("bits", 8)), dense_bits=int(w.get("dense_bits", w.get("bits", 8))),
            per_channel=bool(w.get("per_channel", True)),
            rounding=str(w.get("rounding", "nearest")),
            adaround_iterations=int(w.get("adaround_iterations", DEFAULT_ADAROUND_ITERS)),
            act_bits=int(a.get("bits", 8)), estimator=str(a.get("estimator", "percentile")),
            percentile=float(a.get("percentile", 99.99)), symmetric=bool(a.get("symmetric", False)),
            act_dtype=str(a.get("dtype", "uint8")), quantize_output=bool(a.get("quantize_output", False)),
            equalization=bool(raw.get("equalization", True)), bias_correction=bool(raw.get("bias_correction", True)),
            batch_size=int(cal.get("batch_size", DEFAULT_BATCH)),
            correction_size=int(cal.get("correction_size", DEFAULT_CORRECTION)),
            fallback_max_layers=int(raw.get("fallback", {}).get("max_layers", 8)),
        )
        if not w.get("symmetric", True):
            raise UsageError(f"recipe {name}: weights.symmetric false is not supported",
                             "int8 runtimes expect symmetric (zero-point 0) weights; set it to true")
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values the engine cannot honour."""
        where = f"recipe {self.recipe}"
        if not 2 <= self.weight_bits <= 8:
            raise UsageError(f"{where}: weights.bits {self.weight_bits} must be between 2 and 8")
        if not 2 <= self.dense_bits <= 8:
            raise UsageError(f"{where}: weights.dense_bits {self.dense_bits} must be between 2 and 8")
        if not 2 <= self.act_bits <= 8:
            raise UsageError(f"{where}: activations.bits {self.act_bits} must be between 2 and 8")
        if self.act_dtype not in ACT_DTYPES:
            raise UsageError(f"{where}: activations.dtype {self.act_dtype!r} is not one of {', '.join(ACT_DTYPES)}")
        for key, value in (("calibration.batch_size", self.batch_size),
                           ("calibration.correction_size", self.correction_size),
                           ("weights.adaround_iterations", self.adaround_iterations)):
            if value < 1:
                raise UsageError(f"{where}: {key} {value} must be at least 1")
        if self.overflow_fix not in OVERFLOW_FIX_MODES:
            raise UsageError(f"overflow fix {self.overflow_fix!r} is not one of {', '.join(OVERFLOW_FIX_MODES)}",
                             "pass --overflow-fix auto, all or off")
        if self.fallback_max_layers < 0:
            raise UsageError(f"{where}: fallback.max_layers {self.fallback_max_layers} must not be negative")

    def layer_bits(self, depthwise: bool) -> int:
        """Weight bits of one layer: `weight_bits` for depthwise convs, `dense_bits` otherwise."""
        return self.weight_bits if depthwise else self.dense_bits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
