"""The host side of the toolchain protocol: a worker process in the toolchain venv, called by command.

A `WorkerSession` starts `worker_main.py` with the toolchain's Python and a vendor handler
(both by path), then sends requests one at a time: arguments as JSON, arrays as .npy files in
a private exchange folder. Every way a call can go wrong becomes one `DeployError` line that
names the owner (the target) and the layer (the toolchain worker and its command): the handler
raised (its one line), the worker died (e.g. a segfault in the vendor compiler: the signal
and the last line of its log), or the call ran past its timeout (the worker's process group is
killed). The vendor's own output goes to `log_file`, which each error names.

The worker runs in the exchange folder (vendor tools drop debug files into their working folder).
The session stays up between calls (a vendor model is built once and then run batch after
batch); it ends with `close()`, when it is garbage-collected, or when this process exits (the
worker reads end-of-file on stdin and stops).
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DeployError, UsageError

PROTOCOL = 1
WORKER_MAIN = Path(__file__).with_name("worker_main.py")


def _stop(proc: subprocess.Popen, exchange: Path) -> None:
    """End the worker and everything it started (it leads its own process group), then remove its folder.

    Also run at interpreter exit for a worker kept alive past its export (the rknn runner reuses the
    build's worker), whose folder would otherwise stay behind in the temp dir with the toolkit's files.
    """
    try:
        _end_process(proc)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


def _end_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def last_log_line(log_file: Path, since: int = 0, prefer: tuple[str, ...] = ("Error", "error", "E ")) -> str:
    """The most telling line a toolchain wrote to its log after byte `since`: the last error-looking
    line, else the last line."""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "no log"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if any(mark in line for mark in prefer)]
    return ((errors or lines or ["no output"])[-1])[:300]


class WorkerSession:
    """One worker process of a toolchain venv, running one vendor handler."""

    def __init__(self, python: Path, handler: Path, owner: str, log_file: Path, start_timeout: float = 180.0,
                 env: Mapping[str, str] | None = None):
        self.owner = owner  # e.g. "rknn-int8 (rknn-toolkit2 worker)"
        self.log_file = Path(log_file)
        self.exchange = Path(tempfile.mkdtemp(prefix="mnv4-toolchain-"))
        self._next_id = 0
        self._buffer = b""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(python), str(WORKER_MAIN), str(handler), str(self.exchange)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, cwd=self.exchange,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "MNV4_WORKER_LOG": str(self.log_file)})
        except OSError as exc:
            self._log.close()
            raise UsageError(f"{owner}: cannot start {python} ({exc.strerror or exc})",
                             "check the toolchain path") from None
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.exchange)
        hello = self._read_reply("start", start_timeout)
        if not hello.get("ok"):
            self.close()
            raise DeployError(f"{owner}: the toolchain worker could not start: {hello.get('error')}",
                              f"toolchain log: {self.log_file}")
        self.hello: dict[str, Any] = hello.get("hello") or {}

    # ---- calls ------------------------------------------------------------------------------
    def call(self, command: str, args: Mapping[str, Any] | None = None,
             arrays: Mapping[str, np.ndarray] | None = None, timeout: float = 600.0) -> tuple[dict, dict[str, np.ndarray]]:
        """Run `command` in the worker; its result and arrays, or one DeployError line."""
        if self.proc.poll() is not None:
            raise DeployError(f"{self.owner}: the toolchain worker is not running ({_exit_text(self.proc.returncode)})",
                              f"toolchain log: {self.log_file}")
        self._next_id += 1
        rid = self._next_id
        files = {}
        for name, array in (arrays or {}).items():
            files[name] = f"in-{rid}-{name}.npy"
            np.save(self.exchange / files[name], np.ascontiguousarray(array))
        log_start = self._log_size()
        request = {"protocol": PROTOCOL, "id": rid, "command": command, "args": dict(args or {}), "arrays": files}
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker died; _read_reply says how
        try:
            reply = self._read_reply(command, timeout, log_start)
        finally:
            for file in files.values():
                (self.exchange / file).unlink(missing_ok=True)
        if reply.get("id") != rid:
            raise DeployError(f"{self.owner}: the toolchain worker answered request {reply.get('id')} to {rid}")
        if not reply.get("ok"):
            error = UsageError if reply.get("kind") == "usage" else DeployError
            raise error(f"{self.owner}: {command} failed: {reply.get('error')}", f"toolchain log: {self.log_file}")
        out = {}
        for name, file in (reply.get("arrays") or {}).items():
            out[name] = np.load(self.exchange / file)
            (self.exchange / file).unlink(missing_ok=True)
        return reply.get("result") or {}, out

    def _log_size(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def _read_reply(self, command: str, timeout: float, log_start: int = 0) -> dict[str, Any]:
        """The worker's next control line, or a one-line error when it dies or runs past `timeout`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise DeployError(f"{self.owner}: {command} ran longer than {timeout:.0f} s; the toolchain worker "
                                      f"was stopped", f"toolchain log: {self.log_file}")
                if not selector.select(min(left, 1.0)):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # end of file: the worker is gone
                    code = self.proc.wait()
                    self.close()
                    raise DeployError(f"{self.owner}: the toolchain worker died during {command} ({_exit_text(code)}): "
                                      f"{last_log_line(self.log_file, log_start)}", f"toolchain log: {self.log_file}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            self.close()
            raise DeployError(f"{self.owner}: the toolchain worker wrote a line that is not the protocol's: "
                              f"{line[:120]!r}") from None
        if message.get("protocol") != PROTOCOL:
            self.close()
            raise DeployError(f"{self.owner}: the toolchain worker speaks protocol {message.get('protocol')}, "
                              f"this host {PROTOCOL}", "reinstall mnv4-deploy")
        return message

    # ---- end --------------------------------------------------------------------------------
    def close(self) -> None:
        self._finalizer()
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> "WorkerSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
