"""`--min-target`: Core ML deployment targets, as data, checked without importing coremltools.

A name picks the oldest OS the artifact must load on; it becomes coremltools'
`minimum_deployment_target`. The table mirrors `coremltools.target` (a test keeps the two in
sync): each name maps to the Core ML specification version that OS release reads. Features
this package uses need a minimum version, and a target too old for one is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from mnv4_deploy.errors import UsageError

# name -> Core ML specification version (as coremltools.target defines them)
TARGETS: dict[str, int] = {
    **{f"iOS{v}": s for v, s in ((13, 4), (14, 5), (15, 6), (16, 7), (17, 8), (18, 9), (26, 10))},
    **{f"macOS{v}": s for v, s in (("10_15", 4), ("10_16", 5), ("11", 5), ("12", 6), ("13", 7), ("14", 8),
                                   ("15", 9), ("26", 10))},
    **{f"watchOS{v}": s for v, s in ((6, 4), (7, 5), (8, 6), (9, 7), (10, 8), (11, 9), (26, 10))},
    **{f"tvOS{v}": s for v, s in ((13, 4), (14, 5), (15, 6), (16, 7), (17, 8), (18, 9), (26, 10))},
}


@dataclass(frozen=True)
class Feature:
    """Something an artifact uses, and the oldest specification version that reads it."""

    what: str
    spec_version: int


ML_PROGRAM = Feature("an ML Program (the mlprogram format, fp16 or fp32 compute)", 6)
W8_PER_CHANNEL = Feature("per-channel int8 weights (constexpr dequantization ops)", 7)
A8_ACTIVATIONS = Feature("int8 activations (W8A8: quantize/dequantize ops on activations)", 8)


def releases(spec_version: int) -> str:
    """'iOS16/macOS13/watchOS9/tvOS16' for a specification version."""
    return "/".join(name for name, v in TARGETS.items() if v == spec_version and "10_16" not in name)


def canonical_name(name: str) -> str:
    """Case-insensitive lookup of a deployment target name; unknown names are refused."""
    lookup = {key.lower(): key for key in TARGETS}
    key = lookup.get(name.strip().lower().replace(".", "_"))
    if key is None:
        families = {}
        for known in TARGETS:
            family = known.rstrip("0123456789_")
            families.setdefault(family, []).append(known)
        listing = "; ".join(", ".join(v for v in names if TARGETS[v] >= ML_PROGRAM.spec_version)
                            for names in families.values())
        raise UsageError(f"--min-target {name!r} is not a Core ML deployment target", f"use one of {listing}")
    return key


def check_min_target(name: str | None, features: tuple[Feature, ...], target: str) -> str | None:
    """The canonical target name, or a UsageError naming the feature that needs a newer OS."""
    if name is None:
        return None
    key = canonical_name(name)
    for feature in features:
        if TARGETS[key] < feature.spec_version:
            raise UsageError(f"target {target}: --min-target {key} is too old for {feature.what}, "
                             f"which needs {releases(feature.spec_version)} or newer",
                             f"pass --min-target {releases(feature.spec_version).split('/')[0]} or newer")
    return key


def minimum_name(features: tuple[Feature, ...]) -> str:
    """The oldest iOS target that reads every feature (the default when --min-target is not given)."""
    need = max(f.spec_version for f in features)
    return next(name for name, v in TARGETS.items() if v == need and name.startswith("iOS"))
