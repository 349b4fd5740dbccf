"""A toolchain that ships as a vendor docker image (Horizon's OpenExplorer with hb_mapper).

mnv4-deploy cannot fetch such an image (it comes from the vendor's site, not a package
registry), so `install` explains how to get it instead. Where docker, its engine and the image
are all present, `command` turns a tool invocation into a `docker run` with the working folder
mounted at /work and the caller's uid, so the tool reads and writes the folder as a local run
would. `unavailable()` says in one line which of the three is missing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UsageError

MOUNT = "/work"


@dataclass(frozen=True)
class DockerToolchain:
    """A vendor image with an executable inside, named by an environment variable."""

    name: str  # e.g. "hb_mapper"
    description: str
    executable: str  # the tool inside the image
    image_env: str  # environment variable naming the image
    default_image: str  # what the vendor calls it
    get_image: str  # how a user obtains it (one sentence)

    def image(self) -> str:
        return os.environ.get(self.image_env) or self.default_image

    def unavailable(self) -> str | None:
        """None when `command` can run here; else the one-line reason."""
        docker = shutil.which("docker")
        if docker is None:
            return "docker is not installed"
        try:
            probe = subprocess.run([docker, "image", "inspect", self.image()], capture_output=True, text=True,
                                   timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"docker did not answer ({type(exc).__name__})"
        if probe.returncode != 0:
            said = (probe.stderr.strip().splitlines() or ["no answer"])[-1][:160]
            return f"docker image {self.image()} is not usable here ({said})"
        return None

    def command(self, args: Sequence[str], workdir: Path) -> list[str]:
        """`executable args...` run in the image with `workdir` mounted as the current folder."""
        docker = shutil.which("docker") or "docker"
        return [docker, "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{Path(workdir).resolve()}:{MOUNT}",
                "-w", MOUNT, self.image(), self.executable, *args]

    def status(self) -> dict[str, Any]:
        reason = self.unavailable()
        return {"name": self.name, "kind": "docker", "description": self.description, "usable": reason is None,
                "image": self.image(), "image_env": self.image_env, "reason": reason}

    def install(self, log: Callable[[str], None] = print, force: bool = False) -> dict[str, Any]:
        reason = self.unavailable()
        if reason is None:
            log(f"toolchain {self.name}: docker image {self.image()} is present")
            return self.status()
        raise UsageError(f"toolchain {self.name} is a vendor docker image that mnv4-deploy cannot download: {reason}",
                         f"{self.get_image}; then set {self.image_env} to its name")
