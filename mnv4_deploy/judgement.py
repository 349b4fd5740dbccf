"""Extra judged rows: what a converter measured beside its artifact that is not an artifact itself.

The BPU targets, for example, judge the float bundle like any artifact, and also forecast the
board (NV12 input, emulated int8). Such a forecast has parity and accuracy but no file, status,
size or gate; the report lists it under its target's row as `target [name]`, without knowing
which target made it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Judgement:
    """One extra judged row: parity (and, with labeled images, accuracy) against the reference."""

    name: str  # short tag shown as `target [name]`, e.g. "int8+nv12"
    label: str = ""  # what was measured, in words
    parity: dict[str, Any] = field(default_factory=dict)  # validate.compare(...).to_dict()
    accuracy: dict[str, Any] | None = None  # validate.accuracy(...).to_dict(), with labeled images
    notes: tuple[str, ...] = ()  # e.g. bounds the forecast misses (informative: it does not gate)
    images: int | None = None
    on: str | None = None  # which images: "calibration", "labeled", ...

    def note(self) -> str:
        return "; ".join(x for x in (self.label, *self.notes) if x)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Judgement":
        return cls(name=str(data["name"]), label=str(data.get("label") or ""), parity=dict(data.get("parity") or {}),
                   accuracy=dict(data["accuracy"]) if data.get("accuracy") else None,
                   notes=tuple(data.get("notes") or ()), images=data.get("images"), on=data.get("on"))
