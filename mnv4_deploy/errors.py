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


class OpsOffAccelerator(DeployError):
    """`--strict`: an op would leave the accelerator (EdgeTPU, BPU), from `export` and `check` alike.

    Exit 3, as for failed parity: the model would not run as asked on the device, which is a
    verdict on the model, not a mistake on the command line (exit 2).
    """

    exit_code = ParityFailed.exit_code


class AccuracyDropExceeded(DeployError):
    """An artifact lost more top-1 than the `--max-drop` budget allows (exit 4)."""

    exit_code = 4


class BackendMissing(DeployError):
    """A converter's backend package is not installed here (exit 5)."""

    exit_code = 5


class OutputInUse(DeployError):
    """Another live run holds the output directory's lock (exit 6): nothing was written."""

    exit_code = 6


class OutputNotWritable(UsageError):
    """Writing under the output directory failed (disk full, quota, read-only): exit 2."""


class UnreadableImage(UsageError):
    """One image file cannot be decoded; `reason` is one line (callers usually skip the file)."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ArtifactUnreadable(UsageError):
    """An artifact given to validate/inspect/check is empty, truncated or not of its format (exit 2)."""


EXIT_OK = 0
EXIT_OTHER = DeployError.exit_code
EXIT_USAGE = UsageError.exit_code
EXIT_PARITY = ParityFailed.exit_code
EXIT_ACCURACY = AccuracyDropExceeded.exit_code
EXIT_BACKEND = BackendMissing.exit_code
EXIT_OUTPUT_IN_USE = OutputInUse.exit_code
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM (CI cancel, `kill`, container stop): 128 + 15
