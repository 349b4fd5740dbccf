"""Atomic writes: nothing half-written is ever left under a final name.

Files and directories are built in a temporary sibling (same filesystem) and renamed into
place; an interrupted or killed run leaves at most a `.tmp-<pid>@<host>_*` entry, which the
next run holding the directory's lock removes (run_lock.remove_stale_temp). A write that fails
because the disk is full (or over quota, or read-only) becomes one `OutputNotWritable` line
naming the path, and its temporary file is removed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import OutputNotWritable, UsageError
from .run_lock import TMP_PREFIX, owned_tmp_prefix  # noqa: F401  (TMP_PREFIX: re-exported)

# errors that mean "the output location cannot take more bytes", not a bug
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def output_write_error(exc: OSError, path: Path, what: str = "") -> OutputNotWritable | None:
    """The one-line error for a write that failed for lack of room, or None for other errors.

    `path` is the final name being written (or the output directory, with `what` saying which
    artifact): temporary names mean nothing to the user.
    """
    if exc.errno not in _NO_ROOM:
        return None
    return OutputNotWritable(f"cannot write {what + ' in ' if what else ''}{path}: "
                             f"{exc.strerror or os.strerror(exc.errno)}",
                             "free space (or quota) under the output directory, or choose another --out; "
                             "nothing half-written was kept")


def ensure_writable_dir(path: Path, option: str = "--out") -> Path:
    """Create `path` if needed and prove it is writable, or raise a UsageError naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=owned_tmp_prefix(), delete=True)
        probe.close()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc})",
                         "choose a directory you can write to") from None
    return path


def private_workdir(parent: Path) -> Path:
    """A fresh temporary directory inside `parent` (so the final rename stays atomic).

    Its name carries this process's pid and host, so a later run can tell the work of a
    killed run (stale, removed) from the work of a live one (kept).
    """
    return Path(tempfile.mkdtemp(prefix=owned_tmp_prefix(), dir=parent))


def move_into_place(src: Path, dest: Path) -> Path:
    """Rename `src` (file or directory) to `dest`, replacing an older artifact of that name."""
    try:
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(owned_tmp_prefix() + "old-" + dest.name)
            os.replace(dest, old)
            try:
                os.replace(src, dest)
            except BaseException:
                os.replace(old, dest)  # put the previous artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(src, dest)
    except OSError as exc:
        raise output_write_error(exc, dest) or exc
    return dest


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path` (never half-written)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=owned_tmp_prefix(), dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_write_error(exc, path) or exc from None
        raise
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        h.update(sha256_path(file).encode())
    return h.hexdigest()


def size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
