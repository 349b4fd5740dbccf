"""Atomic writes: nothing half-written is ever left under a final name.

Files and directories are built in a temporary sibling (same filesystem) and renamed into
place; an interrupted run leaves at most a `.tmp-*` directory, which the next run removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UsageError

TMP_PREFIX = ".tmp-"


def ensure_writable_dir(path: Path, option: str = "--out") -> Path:
    """Create `path` if needed and prove it is writable, or raise a UsageError naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=TMP_PREFIX, delete=True)
        probe.close()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc})",
                         "choose a directory you can write to") from None
    for stale in path.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return path


def private_workdir(parent: Path) -> Path:
    """A fresh temporary directory inside `parent` (so the final rename stays atomic)."""
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))


def move_into_place(src: Path, dest: Path) -> Path:
    """Rename `src` (file or directory) to `dest`, replacing an older artifact of that name."""
    if dest.is_dir() and not dest.is_symlink():
        old = dest.with_name(TMP_PREFIX + "old-" + dest.name)
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
    return dest


def write_text_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
