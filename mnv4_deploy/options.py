"""Options a target declares as data: one `TargetOption` per flag, merged across the registry.

A target owns the knowledge of its options (name, type, default, choices, help, the help panel
its flag is listed under); the core only collects them. The CLI builds its flags from these
declarations and the pipeline refuses an option no requested target declares, so a new target
(built-in or a third-party plugin) adds an option without touching the core.

Two targets may declare the same option (the TFLite family and EdgeTPU share `--io-dtype`, the
ONNX family and BPU share `--opset`): their declarations must agree on what a user can type
(flag, type, default, choices), or the registry refuses the pair with one line naming both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import DeployError, UsageError

# --overflow-fix: which GEMM-run channels get 7-bit weights so x86 int16 pair sums cannot saturate
# (quant/overflow.py); kept here, torch-free, so the CLI and the pipeline check it before any model loads
OVERFLOW_FIX_MODES = ("auto", "all", "off")

OPTION_TYPES = (bool, int, float, str)


class OptionConflict(DeployError):
    """Two registered targets declare one option differently (a plugin clashing with a built-in)."""


@dataclass(frozen=True)
class TargetOption:
    """One option a target honours, as data: drives the CLI flag, its help and the checks.

    `default=None` with `type=str` is an optional value (e.g. Core ML's `--min-target`, whose
    default is "the oldest the target allows"). `choices`, when given, is checked by the core
    after the target's own `check_options` (which may say more precisely what is wrong).
    """

    name: str  # Python name: ExportOptions attribute and API mapping key, e.g. "io_dtype"
    type: type  # bool | int | float | str
    default: Any
    help: str
    panel: str  # the `--help` panel its flag is listed under, e.g. "TFLite"
    choices: tuple[Any, ...] = ()
    flag: str = ""  # e.g. "--io-dtype" [default: from the name]

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise OptionConflict(f"option name {self.name!r} is not a Python identifier")
        if self.type not in OPTION_TYPES:
            raise OptionConflict(f"option {self.name}: type {self.type!r} is not one of bool, int, float, str")
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))

    def agrees_with(self, other: "TargetOption") -> bool:
        """Whether two declarations mean the same thing to a user (help text and panel may differ)."""
        return (self.flag, self.type, self.default, tuple(self.choices)) == \
               (other.flag, other.type, other.default, tuple(other.choices))

    def summary(self) -> str:
        choices = f", choices {', '.join(map(str, self.choices))}" if self.choices else ""
        return f"{self.flag} ({self.type.__name__}, default {self.default!r}{choices})"

    def check_value(self, value: Any) -> None:
        """Refuse a value of the wrong type or outside `choices` (one line naming the flag)."""
        if value is None and self.default is None:
            return
        wrong_type = not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            wrong_type = False
        if wrong_type:
            raise UsageError(f"{self.flag} {value!r}: expected type {self.type.__name__}")
        if self.choices and value not in self.choices:
            raise UsageError(f"{self.flag} {value!r} is not one of {', '.join(map(str, self.choices))}")


def merge_declarations(declared: Iterable[tuple[str, TargetOption]],
                       reserved: Iterable[str] = ()) -> dict[str, TargetOption]:
    """(target, option) pairs -> one declaration per option name; disagreements are refused.

    `reserved`: names the core owns (a target cannot redeclare e.g. `fold`). The first
    declaration of a name (in target order) supplies the help text and the panel.
    """
    reserved = frozenset(reserved)
    merged: dict[str, TargetOption] = {}
    owner: dict[str, str] = {}
    for target, option in declared:
        if option.name in reserved:
            raise OptionConflict(f"target {target} declares option {option.flag}, which the core owns",
                                 "rename the target's option")
        first = merged.get(option.name)
        if first is None:
            merged[option.name], owner[option.name] = option, target
        elif not first.agrees_with(option):
            raise OptionConflict(f"targets {owner[option.name]} and {target} declare option {option.name} "
                                 f"differently: {first.summary()} vs {option.summary()}",
                                 f"declare it as {owner[option.name]} does, or rename the plugin's option")
    flags: dict[str, str] = {}
    for name, option in merged.items():
        if flags.setdefault(option.flag, name) != name:
            raise OptionConflict(f"options {flags[option.flag]} and {name} both use the flag {option.flag}",
                                 "rename one of them")
    return merged


def unknown_option(name: str, known: Mapping[str, Any]) -> UsageError:
    """The one-line error for an option no registered target declares."""
    import difflib

    close = difflib.get_close_matches(name, list(known), 3, 0.6)
    return UsageError(f"unknown export option {name!r}",
                      f"did you mean {', '.join(close)}?" if close else f"known options: {', '.join(known)}")
