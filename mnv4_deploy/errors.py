"""Typed errors that carry their process exit code.

The CLI maps every one of these to a single line on stderr and its exit code, in one place
(`cli._run_guarded`), so that CI can gate on the code and users never see a traceback for
a problem they can fix themselves.
"""
from __future__ import annotations


class DeployError(Exception):
    """Base class: anything else that went wrong (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __str__(self) -> str:
        return self.one_line()


class UsageError(DeployError):
    """Bad input from the user: unknown model/target, unreadable file, bad option (exit 2)."""

    exit_code = 2


class ParityFailed(DeployError):
    """An artifact was exported but does not compute what the reference computes (exit 3)."""

    exit_code = 3


class AccuracyDropExceeded(DeployError):
    """An artifact lost more top-1 than the `--max-drop` budget allows (exit 4)."""

    exit_code = 4


class BackendMissing(DeployError):
    """A converter's backend package is not installed here (exit 5)."""

    exit_code = 5


EXIT_OK = 0
EXIT_OTHER = DeployError.exit_code
EXIT_USAGE = UsageError.exit_code
EXIT_PARITY = ParityFailed.exit_code
EXIT_ACCURACY = AccuracyDropExceeded.exit_code
EXIT_BACKEND = BackendMissing.exit_code
