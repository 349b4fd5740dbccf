"""Conventional `--help` for every command, through Typer's public API only.

Typer 0.29 labels each value with its Python type (`<str>`, `<path>`) and each flag with `<bool>`,
which reads as if a flag took a value. Here flags get no metavar, values the usual PATH, INTEGER,
FLOAT or TEXT, enums and declared choices the list `[a|b|c]`, and arguments their name in
capitals. Set once, at definition time (`with_metavars`), so older Typer versions, which read
`metavar` the same way, print the same.
"""
from __future__ import annotations

import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from typer.core import TyperCommand, TyperGroup
from typer.models import ArgumentInfo, ParameterInfo

F = TypeVar("F", bound=Callable[..., Any])

_NAMES = {Path: "PATH", int: "INTEGER", float: "FLOAT", str: "TEXT"}


# A longer choice list squeezes the help column at 80 columns; the option's help names its choices instead.
MAX_CHOICE_METAVAR = 24


def choice_metavar(choices: Sequence[Any]) -> str:
    """`[a|b|c]`, the choice list as Click prints it, or TEXT when that list is too long for one column."""
    text = "[" + "|".join(str(c.value if isinstance(c, Enum) else c) for c in choices) + "]"
    return text if len(text) <= MAX_CHOICE_METAVAR else "TEXT"


def metavar_for(annotation: Any, name: str, is_argument: bool) -> str:
    """The metavar of a parameter typed `annotation`: "" for a flag, PATH, INTEGER, [a|b], ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:  # Optional[X]
        return metavar_for(args[0], name, is_argument)
    if is_argument:
        return name.upper()
    if annotation is bool:
        return ""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return choice_metavar(list(annotation))
    if typing.get_origin(annotation) is list and args:
        return metavar_for(args[0], name, is_argument)
    return _NAMES.get(annotation, "VALUE")


def set_metavar(info: ParameterInfo, annotation: Any, name: str) -> None:
    """Give `info` the conventional metavar unless it names one already."""
    if info.metavar is None:
        info.metavar = metavar_for(annotation, name, isinstance(info, ArgumentInfo))


def with_metavars(fn: F) -> F:
    """Set the conventional metavar on every `Annotated[type, typer.Option/Argument]` parameter of `fn`."""
    signature = getattr(fn, "__signature__", None)
    if signature is not None:
        annotations = {p.name: p.annotation for p in signature.parameters.values()}
    else:
        # Resolved once and written back: a string annotation (from __future__ import annotations) would
        # build new typer.Option objects, without the metavar, each time Typer evaluates it.
        annotations = typing.get_type_hints(fn, include_extras=True)
        fn.__annotations__.update(annotations)
        annotations.pop("return", None)
    for name, annotation in annotations.items():
        if typing.get_origin(annotation) is typing.Annotated:
            base, *extras = typing.get_args(annotation)
            for info in extras:
                if isinstance(info, ParameterInfo):
                    set_metavar(info, base, name)
        else:
            default = inspect.signature(fn).parameters[name].default
            if isinstance(default, ParameterInfo):
                set_metavar(default, annotation, name)
    return fn


def _no_type(ctx: Any) -> None:
    return None


def _conventional(params: list[Any]) -> list[Any]:
    """Flags Typer adds itself (--help, the completion flags) get no metavar; an argument shows only its
    name (ARTIFACT), not Typer 0.29's extra type column (`<path>`, `<list[Path]>`)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = _no_type
    return params


class Command(TyperCommand):
    """A command whose own flags (--help) show no metavar."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))


class Group(TyperGroup):
    """A command group whose own flags (--help, the completion flags) show no metavar."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))
