"""One run per output directory: a lock file taken before anything is written there.

Two runs writing the same `--out` (two CI jobs sharing a workspace, a user re-running before
the first finished) would judge each other's half-moved artifacts and delete each other's
temporary work. The lock is the file `<out>/.mnv4-deploy.lock`, holding the owner's pid, host,
start time and command line. It is created with `os.link` from a fully written private file:
link is atomic and fails when the name exists, also on NFS (where O_EXCL was historically
unreliable and `flock` may be emulated or absent), and the lock never exists half-written.

A second run is refused with `OutputInUse` naming the owner (exit 6). A lock whose owner was on
this host and is no longer running (SIGKILL, OOM kill, power loss) is stale: it is taken over
with a log line. A lock from another host is never taken over (its pid means nothing here);
the message says which file to delete if that run is gone. Takeover on one host is
serialized with `flock` on a file in the system temp directory (never in `--out`), so two
runs finding the same stale lock cannot both win. The lock is released on exit, on errors and
on Ctrl-C/SIGTERM (context manager); only a lock that still carries this run's token is
removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import OutputInUse, UsageError

LOCK_NAME = ".mnv4-deploy.lock"
TMP_PREFIX = ".tmp-"
# private temp entries are named .tmp-<pid>@<host>_<random>: the owner is recognizable later
_OWNED_TMP = re.compile(r"^\.tmp-(\d+)@([A-Za-z0-9.-]+)_")
# names earlier versions gave their temporary work (tempfile's 8 random characters, or old-<artifact>)
_LEGACY_TMP = re.compile(r"^\.tmp-(old-.+|[a-z0-9_]{8}(\.tar\.gz)?)$")

Log = Callable[[str], None]

_held: dict[Path, list] = {}  # lock path -> [token, depth]: re-entrant within one process


def host_name() -> str:
    """This host's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname() or "localhost")[:64] or "localhost"


def owned_tmp_prefix() -> str:
    """Prefix for this process's temporary files and directories (pid and host recoverable)."""
    return f"{TMP_PREFIX}{os.getpid()}@{host_name()}_"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_record(token: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": host_name(), "token": token,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "process_start": _process_start(os.getpid()),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record, {} when unreadable or garbled, None when the lock is gone."""
    try:
        data = json.loads(path.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_stale(owner: dict[str, Any]) -> bool:
    """True when the owner was on this host and that process is gone (or its pid was reused)."""
    if owner.get("host") != host_name():
        return False
    try:
        pid = int(owner.get("pid"))
    except (TypeError, ValueError):
        return False
    if not pid_alive(pid):
        return True
    recorded = owner.get("process_start")
    return recorded is not None and _process_start(pid) not in (None, recorded)


def describe_owner(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown run (the lock file is unreadable)"
    cmd = f": {owner['command']}" if owner.get("command") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}{cmd}"


def _try_create(lock: Path, record: dict[str, Any]) -> bool:
    """Atomically create `lock` holding `record`; False when it already exists."""
    tmp = lock.with_name(f"{owned_tmp_prefix()}lock-{record['token']}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # a filesystem without hard links: fall back to O_EXCL
        if exc.errno not in (1, 38, 95):  # EPERM, ENOSYS, EOPNOTSUPP
            raise
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record, indent=1) + "\n")
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _takeover_guard(directory: Path) -> Iterator[None]:
    """Serialize stale-lock takeover among runs on this host (flock is host-local and reliable)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no takeover race protection, the link still guards creation
        yield
        return
    key = hashlib.sha256(str(directory.resolve()).encode(errors="surrogateescape")).hexdigest()[:24]
    fd = os.open(Path(tempfile.gettempdir()) / f"mnv4-deploy-lock-{key}.guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_temp(directory: Path, log: Log) -> list[str]:
    """Remove temporary entries left by runs that are gone (killed mid-conversion).

    Called with the directory's lock held, so no other live run writes here; entries of a
    live process on this host (this run, or one nested in it) are kept.
    """
    removed = []
    for entry in sorted(directory.glob(TMP_PREFIX + "*")):
        match = _OWNED_TMP.match(entry.name)
        if match is None and not _LEGACY_TMP.match(entry.name):
            continue  # not ours: a user's own .tmp-something is never touched
        if match and match.group(2) == host_name() and pid_alive(int(match.group(1))):
            continue
        whose = f"process {match.group(1)} on {match.group(2)}" if match else "an earlier run"
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
        log(f"removed stale temporary {entry.name} in {directory} (left by {whose}, no longer running)")
    return removed


@contextlib.contextmanager
def output_lock(directory: str | Path, option: str = "--out", log: Log = lambda _m: None) -> Iterator[Path]:
    """Hold `directory` for this run; refuse (OutputInUse, exit 6) when another live run holds it.

    The directory must exist and be writable (artifacts.ensure_writable_dir). Re-entrant within
    one process. On entry, temporary work of dead runs is removed.
    """
    directory = Path(directory)
    lock = (directory / LOCK_NAME).resolve()
    if lock in _held:
        _held[lock][1] += 1
        try:
            yield directory
        finally:
            _held[lock][1] -= 1
        return
    token = uuid.uuid4().hex
    record = _owner_record(token)
    try:
        acquired = _try_create(lock, record)
        if not acquired:
            with _takeover_guard(directory):
                acquired = _try_create(lock, record)
                if not acquired:
                    owner = _read_owner(lock)
                    if owner is not None and not is_stale(owner):
                        raise OutputInUse(
                            f"{option} {directory} is in use by another mnv4-deploy run ({describe_owner(owner)})",
                            f"wait for it to finish or choose another {option}; if that run is gone, delete {lock}")
                    if owner is not None:
                        log(f"taking over the stale lock of {describe_owner(owner)} in {directory}: "
                            "that process is no longer running")
                        lock.unlink(missing_ok=True)
                    acquired = _try_create(lock, record)
            if not acquired:
                raise OutputInUse(f"{option} {directory}: another run took it while this one was starting",
                                  f"wait for it to finish or choose another {option}")
    except OSError as exc:
        raise UsageError(f"{option} {directory}: cannot create the run lock ({exc.strerror or exc})",
                         "choose a directory you can write to") from None
    _held[lock] = [token, 1]
    try:
        remove_stale_temp(directory, log)
        yield directory
    finally:
        del _held[lock]
        owner = _read_owner(lock)
        if owner is not None and owner.get("token") == token:
            lock.unlink(missing_ok=True)
