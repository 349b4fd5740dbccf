"""SHA256SUMS files (`sha256sum -c` format): one writer for exports, merges and BPU bundles.

A directory artifact (an .mlpackage, an OpenVINO IR, a BPU bundle) is listed file by file,
sorted by its path, so the same inputs give the same bytes. Names are relative to the
directory the SHA256SUMS file lives in, so `sha256sum -c SHA256SUMS` works from there.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Iterable

from .artifacts import sha256_path

SUMS_FILE = "SHA256SUMS"


def files_of(path: Path, skip: Collection[str] = ()) -> list[Path]:
    """`path` itself when it is a file; else every file below it (names in `skip` left out), by path."""
    if path.is_file():
        return [path]
    found = (p for p in path.rglob("*") if p.is_file() and p.name not in skip)
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


def listed_name(file: Path, base: Path) -> str:
    """How SHA256SUMS in `base` names `file`: relative to it, with `..` for a file outside."""
    try:
        return file.relative_to(base).as_posix()
    except ValueError:
        return Path(os.path.relpath(file.absolute(), base.absolute())).as_posix()


def sha256sums(files: Iterable[Path], base: Path) -> str:
    """The text of a SHA256SUMS file in `base` covering `files`, in the order given."""
    return "".join(f"{sha256_path(f)}  {listed_name(f, base)}\n" for f in files)


def artifact_sums(roots: Iterable[Path], base: Path) -> str:
    """SHA256SUMS text for artifacts (files or directories) that exist; missing ones are left out."""
    return sha256sums((f for root in roots if root.exists() for f in files_of(root)), base)
