"""Telling the user what a long run is doing: rich bars on a terminal, plain lines in CI logs.

One object serves as the pipeline's `log` and `step` callbacks and counts finished pairs.
On a TTY (stderr) it draws a rich progress bar; anywhere else it prints one plain line per
event, stripped of control characters, so CI logs stay greppable. `rich` is imported only
when it will be used.
"""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, TextIO

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")

AUTO, PLAIN, QUIET = "auto", "plain", "quiet"  # auto: rich on a TTY, plain lines elsewhere


def clean(text: str) -> str:
    """Text without ANSI escapes or control characters (tabs kept), for logs that are read later."""
    return _CONTROL.sub("", text)


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


class Progress:
    """Pipeline log/step sink and pair counter. Use as a context manager around the run."""

    def __init__(self, total: int = 0, mode: str = AUTO, stream: TextIO | None = None):
        self.total = total
        self.done = 0
        self.quiet = mode == QUIET
        self.mode = mode
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.steps: list[tuple[str, float]] = []  # (label, start time), for phase timing
        self._rich: Any = None
        self._task: Any = None
        self._prefix = ""

    # ---- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.mode == AUTO and is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            console = Console(file=self.stream)
            self._rich = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)
            self._rich.start()
            self._task = self._rich.add_task("starting", total=self.total or None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    # ---- events -------------------------------------------------------------------------------
    def context(self, prefix: str) -> None:
        """Name the unit of work (e.g. the model) that following steps and lines belong to."""
        self._prefix = prefix

    def log(self, message: str) -> None:
        """A pipeline log line."""
        self._emit(f"{self._prefix}: {message}" if self._prefix else message)

    def step(self, label: str) -> None:
        """The start of a long step (calibration, int8 plan, one target's conversion...)."""
        self.steps.append((f"{self._prefix} {label}".strip(), time.perf_counter()))
        if self._rich is not None:
            self._rich.update(self._task, description=clean(f"{self._prefix} {label}".strip()))
        else:
            self._emit(f"{self._prefix}: {label} ..." if self._prefix else f"{label} ...")

    def pair_done(self, text: str) -> None:
        """One model x target pair finished (any status)."""
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
        self._emit(f"[{self.done}/{self.total}] {text}" if self.total else text)

    def _emit(self, message: str) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            from rich.text import Text

            self._rich.console.print(Text(clean(message)))
            return
        elapsed = time.perf_counter() - self.started
        for line in clean(message).splitlines() or [""]:
            print(f"[{elapsed:7.1f}s] {line}", file=self.stream, flush=True)

    def phase_seconds(self, end: float | None = None) -> list[tuple[str, float]]:
        """Wall time of each step: from its start to the next step's (or `end`)."""
        end = time.perf_counter() if end is None else end
        marks = self.steps + [("", end)]
        return [(label, round(marks[i + 1][1] - t, 3)) for i, (label, t) in enumerate(self.steps)]
