"""Rockchip NPU platforms rknn-toolkit2 2.5.0 builds for, and what each can compute.

RV1103/RV1106 have no float16 unit: every layer must be int8, so their int8 model quantizes
the logits too (the plan's full-integer variant) and the fp16 target is refused for them.
Every platform here builds and runs in the toolkit's x86 simulator (measured with 2.5.0, see
docs/field-notes.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from mnv4_deploy.errors import UsageError


@dataclass(frozen=True)
class Platform:
    name: str  # the toolkit's target_platform
    boards: str  # what it is found in
    float16: bool = True  # has an fp16 path (else every layer int8)


PLATFORMS = {p.name: p for p in (
    Platform("rk3588", "RK3588/RK3588S: Orange Pi 5, Radxa Rock 5, Firefly ITX-3588J"),
    Platform("rk3576", "RK3576: Radxa Rock 4D, Firefly"),
    Platform("rk3568", "RK3568: Radxa Rock 3A, Firefly ROC-RK3568-PC"),
    Platform("rk3566", "RK3566: Radxa Zero 3, Orange Pi 3B, Pine64 Quartz64"),
    Platform("rk3562", "RK3562"),
    Platform("rv1106", "RV1106: Luckfox Pico Max/Ultra, int8 only", float16=False),
    Platform("rv1103", "RV1103: Luckfox Pico, int8 only", float16=False),
)}
DEFAULT = "rk3588"


def get_platform(name: str) -> Platform:
    if name not in PLATFORMS:
        raise UsageError(f"--rknn-platform {name!r} is not a Rockchip NPU platform", f"use one of {', '.join(PLATFORMS)}")
    return PLATFORMS[name]
