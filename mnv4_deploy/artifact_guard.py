"""Reading artifacts someone hands us: empty, truncated or random input is one line, exit 2.

`validate`, `inspect` and `check` take files that a vendor tool, a copy or a crashed run may
have damaged. Every format's reader (protobuf, flatbuffer, Core ML spec, bundle manifest) fails
in its own way: a ValueError from the interpreter, a DecodeError, an IndexError deep in a
generated binding. `reading()` turns each into one `ArtifactUnreadable` line naming the file.
Before any parser runs, `precheck()` refuses what cannot be an artifact at all (a missing path,
an empty file, a FIFO, which would block a reader forever, an empty directory).

Parsing time is bounded: within the block a watchdog thread raises in the main thread after
`READ_TIMEOUT_S` seconds (`_thread.interrupt_main`, which runs the Python-level handler without
sending a real signal: a process-wide SIGALRM would also interrupt the native threads of
TensorFlow, ExecuTorch or OpenVINO mid-syscall, and crashed a long test session with SIGSEGV).
It stops loops in Python readers; a native parser that never
returns to the interpreter cannot be interrupted this way, which is why the structure checks
come first and the readers check sizes and offsets before following them.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import stat
import threading
from pathlib import Path
from typing import Iterator

from .errors import ArtifactUnreadable, DeployError, UsageError

READ_TIMEOUT_ENV = "MNV4_DEPLOY_READ_TIMEOUT"
READ_TIMEOUT_S = 120.0


class _ReadTimeout(Exception):
    pass


def _printable(path: Path) -> str:
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def precheck(path: str | Path) -> Path:
    """Refuse a path that cannot hold an artifact, before any parser sees it."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{_printable(path)}: no such artifact") from None
    except OSError as exc:
        raise ArtifactUnreadable(f"{_printable(path)}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        try:
            empty = not any(os.scandir(path))
        except OSError as exc:
            raise ArtifactUnreadable(f"{_printable(path)}: cannot list it ({exc.strerror or exc})") from None
        if empty:
            raise ArtifactUnreadable(f"{_printable(path)}: empty directory, not an artifact",
                                     "pass the exported package or bundle directory")
        return path
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactUnreadable(f"{_printable(path)}: not a regular file or directory", "pass an exported artifact")
    if info.st_size == 0:
        raise ArtifactUnreadable(f"{_printable(path)}: empty file (0 bytes)", "the copy or export did not finish; "
                                 "export it again")
    return path


def read_timeout() -> float:
    try:
        return max(1.0, float(os.environ.get(READ_TIMEOUT_ENV, READ_TIMEOUT_S)))
    except ValueError:
        return READ_TIMEOUT_S


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise _ReadTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    watchdog = threading.Timer(seconds, _thread.interrupt_main, args=(signal.SIGALRM,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def reading(path: str | Path, what: str, seconds: float | None = None) -> Iterator[None]:
    """Within the block, any reader failure is `ArtifactUnreadable` naming `path` and `what`.

    Typed errors with their own exit code (a missing backend, a precise UsageError from a
    reader) pass through unchanged; a reader's generic `DeployError` (exit 1, e.g. a corrupt
    weights file) keeps its message as exit 2; anything else, a hang past the time limit
    included, becomes one line.
    """
    shown = _printable(Path(path))
    limit = read_timeout() if seconds is None else seconds
    try:
        with _time_limit(limit):
            yield
    except DeployError as exc:
        if exc.exit_code == DeployError.exit_code:
            raise ArtifactUnreadable(exc.message, exc.hint) from None
        raise
    except _ReadTimeout:
        raise ArtifactUnreadable(f"{shown}: reading it as {what} took longer than {limit:g} s; the file is "
                                 "damaged or not of that format",
                                 f"export it again, or raise {READ_TIMEOUT_ENV} for a very large model") from None
    except RecursionError:
        raise ArtifactUnreadable(f"{shown}: not a readable {what} (nesting too deep)",
                                 "check the file is complete; export it again") from None
    except Exception as exc:  # MemoryError included: a damaged size field can ask for terabytes
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ArtifactUnreadable(f"{shown}: not a readable {what} ({detail})",
                                 "check the file is complete; export it again") from None
