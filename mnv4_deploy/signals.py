"""SIGTERM is handled like Ctrl-C: the run stops, writes what finished, and exits 143.

CI systems cancel a job, `kill` stops a process and container runtimes stop one with SIGTERM;
Python's default is to die on the spot, leaving the output-directory lock and temporary work
for the next run to clean. Raising `Terminated` (a KeyboardInterrupt) instead sends SIGTERM
down the same path as Ctrl-C: converters' temporary directories are removed, the report marks
what finished, the lock is released. The exit code is 143 (128 + SIGTERM), not Ctrl-C's 130, so
a CI log tells "cancelled by the runner" from "interrupted by a person".
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; everything that handles Ctrl-C handles this too."""


def exit_code_for(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _raise_terminated(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler is restored after.

    A no-op outside the main thread (Python delivers signals only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
