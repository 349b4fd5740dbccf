"""A byte-reproducible .tar.gz of a directory (the bundle), so a rebuild hashes the same.

Everything that usually varies between two packs of the same files is fixed: entry order
(sorted paths), timestamps, owner ids and names, permission bits, and the gzip header (mtime 0,
no file name). The archive is written to a temporary name and renamed.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
from pathlib import Path

ENTRY_MTIME = 315532800  # 1980-01-01, the zip epoch: old enough to be obviously fixed, not 0
_FILE_MODE, _DIR_MODE = 0o644, 0o755


def _info(name: str, is_dir: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = _DIR_MODE if is_dir else _FILE_MODE
    info.size = 0 if is_dir else size
    info.mtime = ENTRY_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_gz(src_dir: Path, dest: Path) -> Path:
    """Pack `src_dir` (as a top-level folder of its own name) into `dest`."""
    src_dir = Path(src_dir)
    paths = sorted(src_dir.rglob("*"), key=lambda p: p.relative_to(src_dir).as_posix())
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tar.gz", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                       compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(src_dir.name, True))
                for path in paths:
                    name = f"{src_dir.name}/{path.relative_to(src_dir).as_posix()}"
                    if path.is_dir():
                        tar.addfile(_info(name, True))
                    else:
                        data = path.read_bytes()
                        tar.addfile(_info(name, False, len(data)), io.BytesIO(data))
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
