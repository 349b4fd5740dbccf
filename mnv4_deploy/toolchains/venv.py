"""A toolchain installed into its own virtual environment, from a pinned requirement set.

`install` announces the size first, creates the venv under a temporary name beside its final
place, installs the pinned set with pip (progress as packages are fetched, then the size
written so far while they unpack), proves the vendor module imports, and only then renames it
into place: a half-installed toolchain is never found. A marker file records the requirement
set's hash, so a toolchain installed from other pins is reported stale instead of used.

Where the toolchain is looked for, first found wins: the path a converter option names (e.g.
`--rknn-python`), the environment variable `MNV4_DEPLOY_<NAME>_PYTHON`, then the installed
venv in `$MNV4_DEPLOY_TOOLCHAINS/<name>` (default `~/.cache/mnv4-deploy/toolchains/<name>`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import DeployError, UsageError
from . import ToolchainMissing

ROOT_ENV = "MNV4_DEPLOY_TOOLCHAINS"
MARKER = "mnv4-toolchain.json"
Log = Callable[[str], None]


def toolchains_root() -> Path:
    """Where installed toolchains live: $MNV4_DEPLOY_TOOLCHAINS, else the user's cache folder."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mnv4-deploy" / "toolchains"


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            total += stat.st_size if not os.path.islink(os.path.join(folder, name)) else 0
    return total


def venv_python(path: Path) -> Path:
    """The interpreter of a venv folder, or `path` itself when it names an interpreter."""
    return path / "bin" / "python" if path.is_dir() else path


@dataclass(frozen=True)
class VenvToolchain:
    """A named, pinned Python environment the converters of one vendor run their worker in."""

    name: str  # e.g. "rknn"
    description: str
    requirements: tuple[str, ...]  # what is asked for, e.g. ("rknn-toolkit2==2.5.0",)
    pins: tuple[str, ...]  # every package of the resolved set as name==version (a pip constraints file)
    probe: str  # a module the venv must import, e.g. "rknn.api"
    size_mb: int  # the installed size as measured, announced before installing
    python_versions: tuple[str, ...] = ("3.11",)  # interpreters the vendor ships wheels for
    python_option: str = ""  # the converter flag that names an existing venv, e.g. "--rknn-python"

    # ---- where ------------------------------------------------------------------------------
    @property
    def env_var(self) -> str:
        return f"MNV4_DEPLOY_{re.sub(r'[^A-Z0-9]', '_', self.name.upper())}_PYTHON"

    def home(self) -> Path:
        return toolchains_root() / self.name

    def key(self) -> str:
        """A hash of what would be installed: requirements and pins."""
        text = json.dumps({"requirements": self.requirements, "pins": sorted(self.pins)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def install_command(self) -> str:
        return f"mnv4-deploy toolchain install {self.name}"

    def _hint(self) -> str:
        ways = [f"run `{self.install_command()}` (about {self.size_mb / 1000:.1f} GB)"]
        if self.python_option:
            ways.append(f"pass {self.python_option} PATH to a venv that has {' '.join(self.requirements)}")
        return ", or ".join(ways)

    def _marker(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.home() / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def locate(self, explicit: str | Path | None = None) -> Path:
        """The Python to run the worker with, or a one-line refusal naming how to get one (exit 5)."""
        for source, given in ((self.python_option or "the given path", explicit), (self.env_var, os.environ.get(self.env_var))):
            if given:
                python = venv_python(Path(given).expanduser())
                if not (python.is_file() and os.access(python, os.X_OK)):
                    raise UsageError(f"{source} {given}: no Python interpreter there",
                                     "give a venv folder or its bin/python")
                return python
        marker = self._marker()
        python = venv_python(self.home())
        if marker is None or not python.is_file():
            raise ToolchainMissing(f"the {self.name} toolchain ({', '.join(self.requirements)}) is not installed",
                                   self._hint())
        if marker.get("key") != self.key():
            raise ToolchainMissing(f"the {self.name} toolchain in {self.home()} was installed from other pins",
                                   f"run `{self.install_command()} --force`")
        return python

    def status(self) -> dict[str, Any]:
        try:
            python = self.locate()
            usable, reason = True, None
        except DeployError as exc:
            python, usable, reason = None, False, exc.one_line()
        marker = self._marker() or {}
        return {"name": self.name, "kind": "venv", "description": self.description, "usable": usable,
                "python": str(python) if python else None, "home": str(self.home()), "reason": reason,
                "requirements": list(self.requirements), "installed_size_mb": marker.get("size_mb"),
                "announced_size_mb": self.size_mb, "env_var": self.env_var}

    # ---- install ----------------------------------------------------------------------------
    def base_python(self) -> str:
        """An interpreter the vendor has wheels for: python3.X on PATH, else this one if it fits."""
        for version in self.python_versions:
            found = shutil.which(f"python{version}")
            if found:
                return found
        if f"{sys.version_info.major}.{sys.version_info.minor}" in self.python_versions:
            return sys.executable
        raise UsageError(f"toolchain {self.name} needs Python {' or '.join(self.python_versions)}, none found on PATH",
                         f"install one, or pass {self.python_option or 'a venv'} you made yourself")

    def install(self, log: Log = print, force: bool = False) -> dict[str, Any]:
        """Create the pinned venv (idempotent: an installed one with the same pins is kept)."""
        home, marker = self.home(), self._marker()
        if not force and marker and marker.get("key") == self.key() and venv_python(home).is_file():
            log(f"toolchain {self.name}: already installed in {home} ({marker.get('size_mb')} MB)")
            return {**marker, "installed_now": False}
        root = home.parent
        root.mkdir(parents=True, exist_ok=True)
        free_mb = shutil.disk_usage(root).free // 2**20
        if free_mb < self.size_mb * 1.2:
            raise UsageError(f"toolchain {self.name} needs about {self.size_mb} MB, {root} has {free_mb} MB free",
                             f"free space or set {ROOT_ENV} to another folder")
        log(f"toolchain {self.name}: installing {', '.join(self.requirements)} ({len(self.pins)} pinned packages), "
            f"about {self.size_mb / 1000:.1f} GB, into {home}")
        tmp = root / f".{self.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.time()
        try:
            _run_logged([self.base_python(), "-m", "venv", str(tmp)], root / f"{self.name}.install.log", log,
                        f"toolchain {self.name}: python -m venv")
            (tmp / "constraints.txt").write_text("".join(f"{pin}\n" for pin in sorted(self.pins)))
            pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
                   "--disable-pip-version-check", "-c", str(tmp / "constraints.txt"), *self.requirements]
            _pip_with_progress(pip, root / f"{self.name}.install.log", tmp, self, log)
            _run_logged([str(tmp / "bin" / "python"), "-c", f"import {self.probe}"], root / f"{self.name}.install.log",
                        log, f"toolchain {self.name}: import {self.probe}")
            size_mb = tree_size(tmp) // 2**20
            facts = {"name": self.name, "key": self.key(), "requirements": list(self.requirements),
                     "pins": sorted(self.pins), "size_mb": int(size_mb), "seconds": round(time.time() - started, 1),
                     "python": subprocess.run([str(tmp / "bin" / "python"), "-c",
                                               "import platform; print(platform.python_version())"],
                                              capture_output=True, text=True).stdout.strip()}
            (tmp / MARKER).write_text(json.dumps(facts, indent=2) + "\n")
            if home.exists():
                old = root / f".{self.name}.old-{os.getpid()}"
                os.replace(home, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, home)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"toolchain {self.name}: installed in {home}: {facts['size_mb']} MB in {facts['seconds']:.0f} s")
        return {**facts, "installed_now": True}


def _run_logged(cmd: list[str], log_file: Path, log: Log, what: str) -> None:
    with open(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise DeployError(f"{what} failed (exit {done.returncode}): {_last_error(log_file)}", f"see {log_file}")


def _last_error(log_file: Path) -> str:
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "error", "ModuleNotFoundError", "ImportError"))]
    return ((errors or lines or ["no output"])[-1])[:300]


def _pip_with_progress(cmd: list[str], log_file: Path, venv: Path, chain: VenvToolchain, log: Log) -> None:
    """pip install, saying which package is being fetched (n of the pinned set), then the size written."""
    collected = 0
    installing = threading.Event()
    finished = threading.Event()

    def report_size() -> None:  # unpacking several GB is silent in pip: say how far it got
        while not finished.wait(15):
            if installing.is_set():
                log(f"toolchain {chain.name}: unpacking, {tree_size(venv) / 1e9:.1f} of about "
                    f"{chain.size_mb / 1000:.1f} GB written")

    watcher = threading.Thread(target=report_size, daemon=True)
    watcher.start()
    try:
        with open(log_file, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                if line.startswith("Collecting "):
                    collected += 1
                    log(f"toolchain {chain.name}: [{collected}/{len(chain.pins)}] {line.split()[1]}")
                elif line.startswith("Installing collected packages"):
                    installing.set()
                    log(f"toolchain {chain.name}: installing {collected} packages")
            code = proc.wait()
    finally:
        finished.set()
    if code != 0:
        raise DeployError(f"toolchain {chain.name}: pip install failed (exit {code}): {_last_error(log_file)}",
                          f"see {log_file}")
