"""Run one vendor tool command (on PATH or in a container) with a timeout; failures as one line.

The vendor's output is returned (and, where the tool writes its own log file in `cwd`, that
file is read too), so callers parse the tool's tables. A non-zero exit, a timeout or a missing
executable becomes a `DeployError` naming the owner (the target), the command, and the
tool's last line.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

from ..errors import DeployError


def run_tool(cmd: Sequence[str], cwd: Path, owner: str, what: str, timeout_s: float,
             log_name: str | None = None) -> str:
    """`cmd` in `cwd`; its output (plus `cwd/log_name` when the tool wrote one), or one DeployError line."""
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{owner}: {what} ran longer than {timeout_s:.0f} s",
                          "run it by hand as the bundle README says") from None
    except OSError as exc:
        raise DeployError(f"{owner}: cannot run {cmd[0]} ({exc.strerror or exc})") from None
    text = done.stdout + done.stderr
    log_file = cwd / log_name if log_name else None
    if log_file is not None and log_file.exists():
        text = log_file.read_text(errors="replace") + "\n" + text
    if done.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        raise DeployError(f"{owner}: {what} failed (exit {done.returncode}): {last.strip()[:200]}",
                          f"see {log_name} in {cwd}" if log_name else None)
    return text
