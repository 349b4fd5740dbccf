"""Quantization recipes and parity thresholds from `quant_configs/*.yaml`, schema-checked.

A recipe is data: which estimator, how many calibration images, which corrections, and how
strictly each precision is judged. `extends: NAME` starts from another shipped recipe, so a
target recipe states only what differs. A misspelt key is an error that names the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import UsageError
from .validate import ParityThresholds

ESTIMATORS = ("minmax", "percentile", "entropy", "mse")
ROUNDINGS = ("nearest", "adaround")
PRECISIONS = ("fp32", "fp16", "int8")
EMULATION = "emulation"  # bounds for an artifact against its own PyTorch emulation (e.g. fake-quant)
# the same, for artifacts that compute in fp16 (Core ML W8A8): fp16 re-rounds x/scale before each
# quantize, flipping near-tie integers the fp32 emulation keeps, so the bound is wider
EMULATION_FP16 = "emulation_fp16"
ACT_DTYPES = ("uint8", "int8")

# key -> type, or a nested schema. Leaves may be a tuple of allowed values.
_THRESHOLDS = {"min_cosine": float, "max_rel_abs": float, "min_sqnr_db": float, "min_top1_agreement": float}
SCHEMA: dict[str, Any] = {
    "name": str,
    "description": str,
    "extends": str,
    # batch_size / correction_size / dense_bits / adaround_iterations / dtype / quantize_output: read by
    # mnv4_deploy.quant (see quant/settings.py); documented in quant_configs/default.yaml.
    "calibration": {"size": int, "seed": int, "batch_size": int, "correction_size": int},
    "weights": {"bits": int, "dense_bits": int, "per_channel": bool, "symmetric": bool, "rounding": ROUNDINGS,
                "adaround_iterations": int},
    "activations": {"bits": int, "estimator": ESTIMATORS, "percentile": float, "symmetric": bool,
                    "dtype": ACT_DTYPES, "quantize_output": bool},
    "equalization": bool,
    "bias_correction": bool,
    "fallback": {"max_layers": int},
    "parity": {p: _THRESHOLDS for p in PRECISIONS + (EMULATION, EMULATION_FP16)},
}
REQUIRED_SECTIONS = ("calibration", "weights", "activations", "parity")


def _check(data: Any, schema: Any, where: str, source: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(data, Mapping):
            raise UsageError(f"{source}: {where or 'the recipe'} must be a mapping", "see docs/recipes.md")
        for key, value in data.items():
            if key not in schema:
                raise UsageError(f"{source}: unknown key {where + '.' if where else ''}{key}",
                                 f"allowed here: {', '.join(schema)}")
            _check(value, schema[key], f"{where}.{key}" if where else str(key), source)
    elif isinstance(schema, tuple):
        if data not in schema:
            raise UsageError(f"{source}: {where} = {data!r} is not one of {', '.join(map(str, schema))}")
    elif schema is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise UsageError(f"{source}: {where} must be a number, got {data!r}")
    elif schema is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise UsageError(f"{source}: {where} must be an integer, got {data!r}")
    elif not isinstance(data, schema):
        raise UsageError(f"{source}: {where} must be a {schema.__name__}, got {data!r}")


def _merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def shipped_recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mnv4_deploy.quant_configs").iterdir() if p.name.endswith(".yaml")
                  and not p.name.startswith("bpu_"))


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})", "fix the file's syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a recipe must be a YAML mapping")
    return data


def _raw(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"--quant-config {path}: no such file")
        source, text = str(path), path.read_text()
    else:
        name = str(name_or_path)
        if name not in shipped_recipe_names():
            raise UsageError(f"unknown recipe {name!r}", f"shipped recipes: {', '.join(shipped_recipe_names())}")
        source, text = f"quant_configs/{name}.yaml", resources.files("mnv4_deploy.quant_configs").joinpath(f"{name}.yaml").read_text()
    data = _read_yaml(text, source)
    _check(data, SCHEMA, "", source)
    parent = data.get("extends")
    if parent:
        if parent in seen:
            raise UsageError(f"{source}: 'extends' loops back to {parent!r}")
        data = _merge(_raw(parent, seen + (parent,)), {k: v for k, v in data.items() if k != "extends"})
    return data


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; `raw` is the merged mapping recorded in reports."""

    name: str
    raw: Mapping[str, Any]

    @property
    def calibration_size(self) -> int:
        return int(self.raw["calibration"]["size"])

    @property
    def calibration_seed(self) -> int:
        return int(self.raw["calibration"].get("seed", 0))

    def section(self, key: str) -> Mapping[str, Any]:
        return self.raw.get(key, {})

    def thresholds(self, precision: str) -> ParityThresholds:
        parity = self.raw["parity"]
        if precision == EMULATION_FP16 and precision not in parity:
            precision = EMULATION  # a user recipe that sets only `emulation` means it for both
        if precision not in parity:
            raise UsageError(f"recipe {self.name}: no parity thresholds for precision {precision!r}")
        return ParityThresholds.from_mapping(parity[precision])

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))


def load_recipe(name_or_path: str | Path = "default") -> Recipe:
    """Load a shipped recipe by name, or a user recipe file; validate it fully."""
    data = _raw(name_or_path)
    missing = [s for s in REQUIRED_SECTIONS if s not in data]
    if missing:
        raise UsageError(f"recipe {name_or_path}: missing sections {', '.join(missing)}",
                         "add them or use 'extends: default'")
    for precision in PRECISIONS + (EMULATION,):
        if precision in data["parity"]:
            absent = set(_THRESHOLDS) - set(data["parity"][precision])
            if absent:
                raise UsageError(f"recipe {name_or_path}: parity.{precision} lacks {', '.join(sorted(absent))}")
    if data["calibration"]["size"] < 1:
        raise UsageError(f"recipe {name_or_path}: calibration.size must be at least 1")
    pct = data["activations"].get("percentile")
    if pct is not None and not 50.0 < pct <= 100.0:
        raise UsageError(f"recipe {name_or_path}: activations.percentile {pct} must be in (50, 100]")
    return Recipe(name=str(data.get("name", Path(str(name_or_path)).stem)), raw=data)
